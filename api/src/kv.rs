//! Keys and values: `PUT`/`DELETE /v1/kv/{key}` answers and `GET /v1/kv` pages. (`GET
//! /v1/kv/{key}` answers with the raw value and its version in `ETag`, no JSON.)

use serde::Deserialize;
use serde::Serialize;

use crate::value;
use crate::value::ValueError;

/// `PUT /v1/kv/{key}`: the key's new version and the cluster revision after the write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAnswer {
    pub version: u64,
    pub revision: u64,
}

/// `DELETE /v1/kv/{key}`: whether the key existed, and the revision after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAnswer {
    pub deleted: bool,
    pub revision: u64,
}

/// One key of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvItem {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    pub version: u64,
}

impl KvItem {
    pub fn new(key: impl Into<String>, bytes: &[u8], version: u64) -> Self {
        let (value, value_base64) = value::fields(bytes);
        Self {
            key: key.into(),
            value,
            value_base64,
            version,
        }
    }

    pub fn bytes(&self) -> Result<Vec<u8>, ValueError> {
        value::bytes(self.value.as_deref(), self.value_base64.as_deref())
    }
}

/// `GET /v1/kv?prefix=&limit=&after=`: one page, from one consistent view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPage {
    pub revision: u64,
    pub items: Vec<KvItem>,
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_md_examples_round_trip() {
        let text = r#"{"version":1,"revision":1}"#;
        let put: PutAnswer = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&put).unwrap(), text);
        let text = r#"{"deleted":true,"revision":7}"#;
        let del: DeleteAnswer = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&del).unwrap(), text);
        let page = KvPage {
            revision: 3,
            items: vec![
                KvItem::new("greeting", b"hello", 2),
                KvItem::new("bin", &[0xff], 3),
            ],
            more: false,
        };
        let text = serde_json::to_string(&page).unwrap();
        assert_eq!(
            text,
            r#"{"revision":3,"items":[{"key":"greeting","value":"hello","version":2},{"key":"bin","value_base64":"/w==","version":3}],"more":false}"#
        );
        let back: KvPage = serde_json::from_str(&text).unwrap();
        assert_eq!(back, page);
        assert_eq!(back.items[1].bytes().unwrap(), vec![0xff]);
    }
}
