//! `POST /v1/txn`: compare-then-ops in one atomic step, etcd style.
//!
//! ```text
//! {"compare": [{"key": K, "target": "version", "op": "==", "version": V},
//!              {"key": K, "target": "value",   "op": "==", "value": "S"},
//!              {"key": K, "target": "exists",  "op": "==", "exists": false}],
//!  "success": [{"put": {"key": K, "value": "S"}}, {"delete": {"key": K}}, {"get": {"key": K}}],
//!  "failure": [ ...same op shapes... ]}
//! ```

use serde::Deserialize;
use serde::Serialize;

use crate::value;
use crate::value::ValueError;

/// A txn request body. Unknown fields are refused, so a typo is an error, not a no-op.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compare>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<Op>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure: Vec<Op>,
}

/// What a compare looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompareTarget {
    /// The key's version (0 when absent); needs `version`.
    Version,
    /// The key's value, bytewise; needs `value` or `value_base64`. False for an absent key.
    Value,
    /// Whether the key exists; needs `exists`; only `==` and `!=`.
    Exists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = ">")]
    Gt,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Gt => ">",
        }
    }
}

/// One compare; the field that goes with `target` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    pub op: CompareOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

impl Compare {
    pub fn version(key: impl Into<String>, op: CompareOp, version: u64) -> Self {
        Self {
            key: key.into(),
            target: CompareTarget::Version,
            op,
            version: Some(version),
            value: None,
            value_base64: None,
            exists: None,
        }
    }

    pub fn value(key: impl Into<String>, op: CompareOp, bytes: &[u8]) -> Self {
        let (value, value_base64) = value::fields(bytes);
        Self {
            key: key.into(),
            target: CompareTarget::Value,
            op,
            version: None,
            value,
            value_base64,
            exists: None,
        }
    }

    pub fn exists(key: impl Into<String>, op: CompareOp, exists: bool) -> Self {
        Self {
            key: key.into(),
            target: CompareTarget::Exists,
            op,
            version: None,
            value: None,
            value_base64: None,
            exists: Some(exists),
        }
    }

    /// The compared value's bytes (for `target: value`).
    pub fn value_bytes(&self) -> Result<Vec<u8>, ValueError> {
        value::bytes(self.value.as_deref(), self.value_base64.as_deref())
    }
}

/// One op of a branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum Op {
    Put(PutOp),
    Delete(KeyOp),
    Get(KeyOp),
}

impl Op {
    pub fn put(key: impl Into<String>, bytes: &[u8]) -> Self {
        let (value, value_base64) = value::fields(bytes);
        Op::Put(PutOp {
            key: key.into(),
            value,
            value_base64,
        })
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete(KeyOp { key: key.into() })
    }

    pub fn get(key: impl Into<String>) -> Self {
        Op::Get(KeyOp { key: key.into() })
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Put(p) => &p.key,
            Op::Delete(k) | Op::Get(k) => &k.key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutOp {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl PutOp {
    pub fn bytes(&self) -> Result<Vec<u8>, ValueError> {
        value::bytes(self.value.as_deref(), self.value_base64.as_deref())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyOp {
    pub key: String,
}

/// The answer: which branch ran, one result per op of it, and the revision after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnAnswer {
    pub succeeded: bool,
    pub results: Vec<OpResult>,
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpResult {
    Put(PutResult),
    Delete(DeleteResult),
    /// `null` for a missing key.
    Get(Option<Got>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    pub deleted: bool,
}

/// A `get` that found its key: the key, its value and version, as a listing shows a key.
pub type Got = crate::kv::KvItem;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_md_request_round_trips() {
        let text = r#"{"compare":[{"key":"a","target":"version","op":"==","version":3},{"key":"b","target":"value","op":"==","value":"S"},{"key":"c","target":"exists","op":"==","exists":false}],"success":[{"put":{"key":"a","value":"S"}},{"delete":{"key":"b"}},{"get":{"key":"c"}}],"failure":[{"get":{"key":"a"}}]}"#;
        let txn: TxnRequest = serde_json::from_str(text).unwrap();
        assert_eq!(txn.compare[0], Compare::version("a", CompareOp::Eq, 3));
        assert_eq!(txn.compare[1], Compare::value("b", CompareOp::Eq, b"S"));
        assert_eq!(txn.compare[2], Compare::exists("c", CompareOp::Eq, false));
        assert_eq!(txn.success[0], Op::put("a", b"S"));
        assert_eq!(serde_json::to_string(&txn).unwrap(), text);
    }

    #[test]
    fn the_api_md_answer_round_trips() {
        let text = r#"{"succeeded":true,"results":[{"put":{"version":4}},{"delete":{"deleted":true}},{"get":{"key":"c","value":"S","version":2}},{"get":null}],"revision":4}"#;
        let answer: TxnAnswer = serde_json::from_str(text).unwrap();
        assert_eq!(answer.results[3], OpResult::Get(None));
        assert_eq!(serde_json::to_string(&answer).unwrap(), text);
    }

    #[test]
    fn typos_and_bad_shapes_are_refused() {
        for bad in [
            r#"{"bogus":[]}"#,
            r#"{"success":[{"frobnicate":{"key":"a"}}]}"#,
            r#"{"compare":[{"key":"a","target":"version","op":"=~","version":1}]}"#,
            r#"{"compare":[{"key":"a","target":"colour","op":"==","version":1}]}"#,
            r#"{"success":[{"put":{"key":"a","value":"1","extra":1}}]}"#,
        ] {
            assert!(serde_json::from_str::<TxnRequest>(bad).is_err(), "{bad}");
        }
    }
}
