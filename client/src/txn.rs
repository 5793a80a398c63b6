//! Transactions (`POST /v1/txn`): typed compares and ops, and their docs/api.md JSON form.
//!
//! Build one with [`TxnRequest::new`] and `when` / `then` / `otherwise`, or read the docs/api.md JSON
//! with [`TxnRequest::from_json`] (the CLI does). Encoding and decoding are written side by side
//! and tested as a round trip.
//!
//! Left out: the API's limits on compares and ops per branch and on duplicate writes; the server
//! checks those and answers 400 `invalid_request`.

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use serde_json::Map;
use serde_json::Value;

use crate::encoding;
use crate::error::Error;
use crate::types::kv_item_from_json;
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
    fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Gt => ">",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "==" => Some(CompareOp::Eq),
            "!=" => Some(CompareOp::Ne),
            "<" => Some(CompareOp::Lt),
            ">" => Some(CompareOp::Gt),
            _ => None,
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

    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("key".into(), Value::String(self.key().to_string()));
        match self {
            Compare::Version { op, version, .. } => {
                object.insert("target".into(), json!("version"));
                object.insert("op".into(), json!(op.as_str()));
                object.insert("version".into(), json!(version));
            }
            Compare::Value { op, value, .. } => {
                object.insert("target".into(), json!("value"));
                object.insert("op".into(), json!(op.as_str()));
                encoding::put_value(&mut object, value);
            }
            Compare::Exists { op, exists, .. } => {
                object.insert("target".into(), json!("exists"));
                object.insert("op".into(), json!(op.as_str()));
                object.insert("exists".into(), json!(exists));
            }
        }
        Value::Object(object)
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        let object = value.as_object().ok_or("a compare is not an object")?;
        let key = string_field(object, "key", "a compare")?;
        let op_text = string_field(object, "op", "a compare")?;
        let op = CompareOp::parse(&op_text)
            .ok_or_else(|| format!("compare op {op_text:?} is not one of == != < >"))?;
        match string_field(object, "target", "a compare")?.as_str() {
            "version" => {
                let version = object
                    .get("version")
                    .and_then(Value::as_u64)
                    .ok_or("a version compare needs a numeric \"version\"")?;
                Ok(Compare::Version { key, op, version })
            }
            "value" => {
                let value = encoding::take_value(object)?
                    .ok_or("a value compare needs \"value\" or \"value_base64\"")?;
                Ok(Compare::Value { key, op, value })
            }
            "exists" => {
                let exists = object
                    .get("exists")
                    .and_then(Value::as_bool)
                    .ok_or("an exists compare needs a boolean \"exists\"")?;
                Ok(Compare::Exists { key, op, exists })
            }
            other => Err(format!(
                "compare target {other:?} is not version, value or exists"
            )),
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

    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value } => {
                let mut inner = Map::new();
                inner.insert("key".into(), Value::String(key.clone()));
                encoding::put_value(&mut inner, value);
                json!({ "put": inner })
            }
            Op::Delete { key } => json!({ "delete": { "key": key } }),
            Op::Get { key } => json!({ "get": { "key": key } }),
        }
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        let object = value
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or("an op must be an object with one field: put, delete or get")?;
        let (name, inner) = object.iter().next().ok_or("an op is empty")?;
        let inner = inner
            .as_object()
            .ok_or_else(|| format!("the {name} op is not an object"))?;
        let key = string_field(inner, "key", "an op")?;
        match name.as_str() {
            "put" => {
                let value = encoding::take_value(inner)?
                    .ok_or("a put op needs \"value\" or \"value_base64\"")?;
                Ok(Op::Put { key, value })
            }
            "delete" => Ok(Op::Delete { key }),
            "get" => Ok(Op::Get { key }),
            other => Err(format!("op {other:?} is not put, delete or get")),
        }
    }
}

fn string_field(object: &Map<String, Value>, name: &str, what: &str) -> Result<String, String> {
    object
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{what} needs a string {name:?}"))
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
    pub fn to_json(&self) -> Value {
        json!({
            "compare": self.compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": self.success.iter().map(Op::to_json).collect::<Vec<_>>(),
            "failure": self.failure.iter().map(Op::to_json).collect::<Vec<_>>(),
        })
    }

    /// Reads a docs/api.md request body; missing lists are empty. Errors are `InvalidRequest`.
    pub fn from_json(body: &Value) -> Result<Self, Error> {
        let invalid = |message: String| Error::InvalidRequest { message };
        let object = body
            .as_object()
            .ok_or_else(|| invalid("a txn must be a JSON object".to_string()))?;
        if let Some(unknown) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "compare" | "success" | "failure"))
        {
            return Err(invalid(format!("unknown txn field {unknown:?}")));
        }
        let list = |name: &str| -> Result<&[Value], Error> {
            match object.get(name) {
                None => Ok(&[]),
                Some(Value::Array(items)) => Ok(items),
                Some(_) => Err(invalid(format!("txn field {name:?} must be a list"))),
            }
        };
        let ops = |name: &str| -> Result<Vec<Op>, Error> {
            list(name)?
                .iter()
                .map(|v| Op::from_json(v).map_err(invalid))
                .collect()
        };
        Ok(TxnRequest {
            compare: list("compare")?
                .iter()
                .map(|v| Compare::from_json(v).map_err(invalid))
                .collect::<Result<_, _>>()?,
            success: ops("success")?,
            failure: ops("failure")?,
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
    fn from_json(value: &Value) -> Result<Self, String> {
        let object = value
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or("a result is not {op: ...}")?;
        let (name, inner) = object.iter().next().ok_or("a result is empty")?;
        let field = |field: &str| {
            inner
                .get(field)
                .ok_or_else(|| format!("{name} result has no {field}"))
        };
        match name.as_str() {
            "put" => Ok(OpResult::Put {
                version: field("version")?
                    .as_u64()
                    .ok_or("put version is not a number")?,
            }),
            "delete" => Ok(OpResult::Delete {
                deleted: field("deleted")?
                    .as_bool()
                    .ok_or("deleted is not a boolean")?,
            }),
            "get" if inner.is_null() => Ok(OpResult::Get(None)),
            "get" => Ok(OpResult::Get(Some(kv_item_from_json(inner)?))),
            other => Err(format!("unknown op result {other:?}")),
        }
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
    pub(crate) fn from_json(body: &Value, served_by: ServedBy) -> Result<Self, String> {
        let succeeded = body
            .get("succeeded")
            .and_then(Value::as_bool)
            .ok_or("no succeeded")?;
        let revision = body
            .get("revision")
            .and_then(Value::as_u64)
            .ok_or("no revision")?;
        let results = match body.get("results") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(OpResult::from_json)
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("results is not a list".to_string()),
        };
        Ok(TxnResponse {
            succeeded,
            revision,
            results,
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
        let request = sample();
        assert_eq!(TxnRequest::from_json(&request.to_json()), Ok(request));
        assert_eq!(TxnRequest::from_json(&json!({})), Ok(TxnRequest::new()));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
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
        let body = json!({"succeeded": true, "revision": 12, "results": [
            {"put": {"version": 12}}, {"delete": {"deleted": false}},
            {"get": {"key": "a", "value": "x", "version": 4}}, {"get": null}]});
        let response = TxnResponse::from_json(&body, ServedBy::default()).expect("ok");
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
        assert!(TxnResponse::from_json(&json!({"succeeded": true}), ServedBy::default()).is_err());
    }
}
