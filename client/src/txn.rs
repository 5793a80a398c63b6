//! Transactions (`POST /v1/txn`): typed compares and ops with bytes for values.
//!
//! Build one with [`TxnRequest::new`] and `when` / `then` / `otherwise`, or read the
//! docs/api.md JSON with [`TxnRequest::from_json`] (the CLI does). The JSON shapes themselves
//! are `metrokv_api::txn`'s; this module only converts between them and the typed form.
//!
//! Left out: the API's limits on compares and ops per branch and on duplicate writes; the server
//! checks those and answers 400 `invalid_request`.

use bytes::Bytes;
use metrokv_api::txn as wire;
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::types::KvItem;
use crate::types::ServedBy;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Gt,
}

impl CompareOp {
    fn to_wire(self) -> wire::CompareOp {
        match self {
            CompareOp::Eq => wire::CompareOp::Eq,
            CompareOp::Ne => wire::CompareOp::Ne,
            CompareOp::Lt => wire::CompareOp::Lt,
            CompareOp::Gt => wire::CompareOp::Gt,
        }
    }

    fn from_wire(op: wire::CompareOp) -> Self {
        match op {
            wire::CompareOp::Eq => CompareOp::Eq,
            wire::CompareOp::Ne => CompareOp::Ne,
            wire::CompareOp::Lt => CompareOp::Lt,
            wire::CompareOp::Gt => CompareOp::Gt,
        }
    }
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's version (0 when absent).
    Version {
        key: String,
        op: CompareOp,
        version: u64,
    },
    /// The key's value, bytewise.
    Value {
        key: String,
        op: CompareOp,
        value: Bytes,
    },
    /// Whether the key exists (only `Eq` and `Ne` are meaningful).
    Exists {
        key: String,
        op: CompareOp,
        exists: bool,
    },
}

impl Compare {
    pub fn version(key: impl Into<String>, op: CompareOp, version: u64) -> Self {
        Compare::Version {
            key: key.into(),
            op,
            version,
        }
    }

    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Bytes>) -> Self {
        Compare::Value {
            key: key.into(),
            op,
            value: value.into(),
        }
    }

    /// The key exists.
    pub fn exists(key: impl Into<String>) -> Self {
        Compare::Exists {
            key: key.into(),
            op: CompareOp::Eq,
            exists: true,
        }
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::Exists {
            key: key.into(),
            op: CompareOp::Eq,
            exists: false,
        }
    }

    fn key(&self) -> &str {
        match self {
            Compare::Version { key, .. }
            | Compare::Value { key, .. }
            | Compare::Exists { key, .. } => key,
        }
    }

    fn to_wire(&self) -> wire::Compare {
        match self {
            Compare::Version { key, op, version } => {
                wire::Compare::version(key.clone(), op.to_wire(), *version)
            }
            Compare::Value { key, op, value } => {
                wire::Compare::value(key.clone(), op.to_wire(), value)
            }
            Compare::Exists { key, op, exists } => {
                wire::Compare::exists(key.clone(), op.to_wire(), *exists)
            }
        }
    }

    fn from_wire(c: wire::Compare) -> Result<Self, String> {
        let op = CompareOp::from_wire(c.op);
        let what = || format!("compare on {:?}", c.key);
        match c.target {
            wire::CompareTarget::Version => {
                let version = c
                    .version
                    .ok_or_else(|| format!("{}: a version compare needs \"version\"", what()))?;
                Ok(Compare::Version {
                    key: c.key,
                    op,
                    version,
                })
            }
            wire::CompareTarget::Value => {
                let value = c.value_bytes().map_err(|e| format!("{}: {e}", what()))?;
                Ok(Compare::Value {
                    key: c.key,
                    op,
                    value: Bytes::from(value),
                })
            }
            wire::CompareTarget::Exists => {
                let exists = c
                    .exists
                    .ok_or_else(|| format!("{}: an exists compare needs \"exists\"", what()))?;
                Ok(Compare::Exists {
                    key: c.key,
                    op,
                    exists,
                })
            }
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Bytes },
    Delete { key: String },
    Get { key: String },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }

    fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => key,
        }
    }

    fn to_wire(&self) -> wire::Op {
        match self {
            Op::Put { key, value } => wire::Op::put(key.clone(), value),
            Op::Delete { key } => wire::Op::delete(key.clone()),
            Op::Get { key } => wire::Op::get(key.clone()),
        }
    }

    fn from_wire(op: wire::Op) -> Result<Self, String> {
        Ok(match op {
            wire::Op::Put(p) => {
                let value = p.bytes().map_err(|e| format!("put of {:?}: {e}", p.key))?;
                Op::Put {
                    key: p.key,
                    value: Bytes::from(value),
                }
            }
            wire::Op::Delete(k) => Op::Delete { key: k.key },
            wire::Op::Get(k) => Op::Get { key: k.key },
        })
    }
}

/// An atomic compare-then-ops request: if every compare holds, `success` runs, else `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
    /// Reused on every retry; generated when absent (as [`crate::PutOptions::idempotency_key`]).
    pub idempotency_key: Option<String>,
}

impl TxnRequest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a compare.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compare.push(compare);
        self
    }

    /// Adds an op to the success branch.
    pub fn then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }

    /// Adds an op to the failure branch.
    pub fn otherwise(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The docs/api.md request body.
    pub fn to_api(&self) -> wire::TxnRequest {
        wire::TxnRequest {
            compare: self.compare.iter().map(Compare::to_wire).collect(),
            success: self.success.iter().map(Op::to_wire).collect(),
            failure: self.failure.iter().map(Op::to_wire).collect(),
        }
    }

    /// The request body as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_api()).expect("a txn always encodes")
    }

    /// Reads a docs/api.md request body; missing lists are empty. Errors are `InvalidRequest`.
    pub fn from_json(body: &Value) -> Result<Self, Error> {
        let invalid = |message: String| Error::InvalidRequest { message };
        if !body.is_object() {
            return Err(invalid("a txn must be a JSON object".to_string()));
        }
        let txn: wire::TxnRequest = serde_json::from_value(body.clone())
            .map_err(|e| invalid(format!("malformed txn: {e}")))?;
        let ops = |ops: Vec<wire::Op>| -> Result<Vec<Op>, Error> {
            ops.into_iter()
                .map(|op| Op::from_wire(op).map_err(invalid))
                .collect()
        };
        Ok(TxnRequest {
            compare: txn
                .compare
                .into_iter()
                .map(|c| Compare::from_wire(c).map_err(invalid))
                .collect::<Result<_, _>>()?,
            success: ops(txn.success)?,
            failure: ops(txn.failure)?,
            idempotency_key: None,
        })
    }

    /// Every key the request names, for local validation.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.compare
            .iter()
            .map(Compare::key)
            .chain(self.success.iter().map(Op::key))
            .chain(self.failure.iter().map(Op::key))
    }
}

/// The result of one op, in the order of the branch that ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResult {
    Put {
        version: u64,
    },
    Delete {
        deleted: bool,
    },
    /// `None` for a missing key.
    Get(Option<KvItem>),
}

impl OpResult {
    fn from_wire(result: wire::OpResult) -> Result<Self, String> {
        Ok(match result {
            wire::OpResult::Put(p) => OpResult::Put { version: p.version },
            wire::OpResult::Delete(d) => OpResult::Delete { deleted: d.deleted },
            wire::OpResult::Get(None) => OpResult::Get(None),
            wire::OpResult::Get(Some(got)) => {
                let value = got
                    .bytes()
                    .map_err(|e| format!("get of {:?}: {e}", got.key))?;
                OpResult::Get(Some(KvItem {
                    key: got.key,
                    value: Bytes::from(value),
                    version: got.version,
                }))
            }
        })
    }
}

/// The answer to a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TxnResponse {
    /// True when every compare held (so `success` ran).
    pub succeeded: bool,
    pub revision: u64,
    pub results: Vec<OpResult>,
    pub served_by: ServedBy,
}

impl TxnResponse {
    pub(crate) fn from_api(answer: wire::TxnAnswer, served_by: ServedBy) -> Result<Self, String> {
        Ok(TxnResponse {
            succeeded: answer.succeeded,
            revision: answer.revision,
            results: answer
                .results
                .into_iter()
                .map(OpResult::from_wire)
                .collect::<Result<_, _>>()?,
            served_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TxnRequest {
        TxnRequest::new()
            .when(Compare::version("a", CompareOp::Eq, 3))
            .when(Compare::value("b", CompareOp::Ne, &b"\xff\x00"[..]))
            .when(Compare::absent("c"))
            .then(Op::put("a", "new"))
            .then(Op::put("bin", &b"\x80"[..]))
            .then(Op::delete("b"))
            .otherwise(Op::get("a"))
    }

    #[test]
    fn requests_encode_the_api_shape() {
        use serde_json::json;
        let body = sample().to_json();
        assert_eq!(
            body["compare"][0],
            json!({"key": "a", "target": "version", "op": "==", "version": 3})
        );
        assert_eq!(
            body["compare"][1],
            json!({"key": "b", "target": "value", "op": "!=", "value_base64": "/wA="})
        );
        assert_eq!(
            body["compare"][2],
            json!({"key": "c", "target": "exists", "op": "==", "exists": false})
        );
        assert_eq!(
            body["success"][0],
            json!({"put": {"key": "a", "value": "new"}})
        );
        assert_eq!(
            body["success"][1],
            json!({"put": {"key": "bin", "value_base64": "gA=="}})
        );
        assert_eq!(body["success"][2], json!({"delete": {"key": "b"}}));
        assert_eq!(body["failure"][0], json!({"get": {"key": "a"}}));
    }

    #[test]
    fn requests_round_trip_through_json() {
        use serde_json::json;
        let request = sample();
        assert_eq!(TxnRequest::from_json(&request.to_json()), Ok(request));
        assert_eq!(TxnRequest::from_json(&json!({})), Ok(TxnRequest::new()));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        use serde_json::json;
        let cases = [
            json!([]),
            json!({"compare": {}}),
            json!({"compare": [{"key": "a", "target": "version", "op": "=", "version": 1}]}),
            json!({"compare": [{"key": "a", "target": "mood", "op": "==", "mood": 1}]}),
            json!({"compare": [{"key": "a", "target": "version", "op": "=="}]}),
            json!({"success": [{"put": {"key": "a"}}]}),
            json!({"success": [{"put": {"key": "a", "value": "x"}, "get": {"key": "a"}}]}),
            json!({"success": [{"merge": {"key": "a"}}]}),
            json!({"sucess": []}),
        ];
        for case in cases {
            assert!(
                matches!(
                    TxnRequest::from_json(&case),
                    Err(Error::InvalidRequest { .. })
                ),
                "{case}"
            );
        }
    }

    #[test]
    fn responses_decode_every_result_shape() {
        use serde_json::json;
        let body = json!({"succeeded": true, "revision": 12, "results": [
            {"put": {"version": 12}}, {"delete": {"deleted": false}},
            {"get": {"key": "a", "value": "x", "version": 4}}, {"get": null}]});
        let answer = serde_json::from_value(body.clone()).expect("shape");
        let response = TxnResponse::from_api(answer, ServedBy::default()).expect("ok");
        assert!(response.succeeded);
        assert_eq!(
            response.results,
            vec![
                OpResult::Put { version: 12 },
                OpResult::Delete { deleted: false },
                OpResult::Get(Some(KvItem {
                    key: "a".into(),
                    value: "x".into(),
                    version: 4
                })),
                OpResult::Get(None),
            ]
        );
        // And they serialize back to the same shape for the CLI.
        let results = serde_json::to_value(&response.results).expect("json");
        assert_eq!(results, body["results"]);
        assert!(serde_json::from_value::<wire::TxnAnswer>(json!({"succeeded": true})).is_err());
    }
}
