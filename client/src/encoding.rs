//! Wire encodings: keys and ids in URL paths and queries, and values inside JSON bodies.
//!
//! Invariants:
//! - A path segment is percent-encoded except for RFC 3986 unreserved characters, so `/`, `?`,
//!   `%`, `#` and spaces in keys never change which route is hit.
//! - The segments `.` and `..` are refused: URL parsers resolve them (even as `%2E`) before the
//!   request leaves, so such a key would silently address another resource. Those keys are still
//!   reachable through `POST /v1/txn`, which carries keys in the body.
//! - JSON values use `value` when the bytes are UTF-8 and `value_base64` otherwise; decoding
//!   prefers `value_base64` when both are present.
//!
//! Left out: the HTTP calls themselves (see `transport.rs`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::utf8_percent_encode;
use percent_encoding::AsciiSet;
use percent_encoding::NON_ALPHANUMERIC;
use serde_json::Map;
use serde_json::Value;

use crate::error::Error;
use crate::limits::ID_BYTES_MAX;
use crate::limits::KEY_BYTES_MAX;

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment or query value.
pub(crate) fn encode_component(raw: &str) -> String {
    utf8_percent_encode(raw, COMPONENT).to_string()
}

/// Checks a key against docs/api.md (1..=1024 bytes) and returns it encoded for a path.
pub(crate) fn key_path_segment(key: &str) -> Result<String, Error> {
    check_key(key)?;
    path_segment("key", key)
}

/// Checks an account or transfer id (1..=128 bytes) and returns it encoded for a path.
pub(crate) fn id_path_segment(what: &str, id: &str) -> Result<String, Error> {
    check_id(what, id)?;
    path_segment(what, id)
}

fn path_segment(what: &str, raw: &str) -> Result<String, Error> {
    if raw == "." || raw == ".." {
        return Err(Error::InvalidRequest {
            message: format!(
                "the {what} {raw:?} cannot be used in a URL path (it would be resolved as a \
                 directory step); use a transaction (POST /v1/txn) for this key"
            ),
        });
    }
    Ok(encode_component(raw))
}

/// Checks a key's length against docs/api.md; keys inside a txn body are checked here too.
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(Error::InvalidRequest {
            message: format!(
                "a key must be 1 to {KEY_BYTES_MAX} bytes of UTF-8, this one has {} bytes",
                key.len()
            ),
        });
    }
    Ok(())
}

/// Checks an account id, transfer id or idempotency key (1..=128 bytes).
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(Error::InvalidRequest {
            message: format!(
                "a {what} must be 1 to {ID_BYTES_MAX} bytes, this one has {} bytes",
                id.len()
            ),
        });
    }
    Ok(())
}

/// Builds `?a=1&b=2` from the pairs whose value is present; empty when none is.
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        let Some(value) = value else { continue };
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(name);
        out.push('=');
        out.push_str(&encode_component(value));
    }
    out
}

/// Puts `value` (UTF-8) or `value_base64` (anything else) into a JSON object.
pub(crate) fn put_value(object: &mut Map<String, Value>, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => object.insert("value".to_string(), Value::String(text.to_string())),
        Err(_) => object.insert(
            "value_base64".to_string(),
            Value::String(BASE64.encode(value)),
        ),
    };
}

/// Reads a value from `value_base64` or `value`. `Ok(None)` when neither field is present;
/// `Err` (a description) when a field has the wrong type or is not valid base64.
pub(crate) fn take_value(object: &Map<String, Value>) -> Result<Option<Bytes>, String> {
    if let Some(encoded) = object.get("value_base64") {
        let Value::String(encoded) = encoded else {
            return Err("value_base64 is not a string".to_string());
        };
        return BASE64
            .decode(encoded)
            .map(|raw| Some(Bytes::from(raw)))
            .map_err(|e| format!("value_base64 is not valid base64: {e}"));
    }
    match object.get("value") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(Bytes::from(text.clone().into_bytes()))),
        Some(_) => Err("value is not a string".to_string()),
    }
}

/// Serde helper: serializes a value as docs/api.md does, `value` or `value_base64`, into a map that
/// is being built (used by the manual `Serialize` impls of result types).
pub(crate) fn serialize_value_field<M: serde::ser::SerializeMap>(
    map: &mut M,
    value: &[u8],
) -> Result<(), M::Error> {
    match std::str::from_utf8(value) {
        Ok(text) => map.serialize_entry("value", text),
        Err(_) => map.serialize_entry("value_base64", &BASE64.encode(value)),
    }
}

/// Parses an `ETag` such as `"17"` (or `W/"17"`) into a version.
pub(crate) fn parse_etag(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    raw.trim_matches('"').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_encode_everything_but_unreserved() {
        assert_eq!(encode_component("abc-._~XYZ09"), "abc-._~XYZ09");
        assert_eq!(encode_component("a/b"), "a%2Fb");
        assert_eq!(
            encode_component("a b?c#d%e&f=g+h"),
            "a%20b%3Fc%23d%25e%26f%3Dg%2Bh"
        );
        assert_eq!(encode_component("ключ"), "%D0%BA%D0%BB%D1%8E%D1%87");
        assert_eq!(
            key_path_segment("users/42").ok().as_deref(),
            Some("users%2F42")
        );
    }

    #[test]
    fn keys_are_checked_before_encoding() {
        assert!(matches!(
            key_path_segment(""),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(matches!(
            key_path_segment("."),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(matches!(
            key_path_segment(".."),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(key_path_segment("...").is_ok());
        assert!(key_path_segment(&"k".repeat(KEY_BYTES_MAX)).is_ok());
        assert!(key_path_segment(&"k".repeat(KEY_BYTES_MAX + 1)).is_err());
        assert!(id_path_segment("transfer id", &"t".repeat(ID_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn encoded_keys_survive_url_parsing() {
        // The URL parser must leave our encoding alone, or keys would address other routes.
        for key in ["a/../b", "%2E%2E", "a?b", "sp ace", "...", "x#y"] {
            let segment = key_path_segment(key).expect("valid key");
            let url = reqwest::Url::parse(&format!("http://h:1/v1/kv/{segment}")).expect("url");
            assert_eq!(url.path(), format!("/v1/kv/{segment}"), "key {key:?}");
            let decoded = percent_encoding::percent_decode_str(&segment).decode_utf8_lossy();
            assert_eq!(decoded, key);
        }
    }

    #[test]
    fn queries_skip_absent_values_and_encode_present_ones() {
        assert_eq!(query(&[("prefix", None)]), "");
        let q = query(&[
            ("prefix", Some("a/b c".to_string())),
            ("limit", None),
            ("after", Some("a&b".to_string())),
        ]);
        assert_eq!(q, "?prefix=a%2Fb%20c&after=a%26b");
    }

    #[test]
    fn values_round_trip_as_utf8_or_base64() {
        for value in [
            &b"hello"[..],
            &[0xff, 0x00, 0xfe][..],
            &b""[..],
            "é".as_bytes(),
        ] {
            let mut object = Map::new();
            put_value(&mut object, value);
            let is_utf8 = std::str::from_utf8(value).is_ok();
            assert_eq!(object.contains_key("value"), is_utf8);
            assert_eq!(object.contains_key("value_base64"), !is_utf8);
            assert_eq!(take_value(&object), Ok(Some(Bytes::copy_from_slice(value))));
        }
    }

    #[test]
    fn base64_wins_and_bad_values_are_reported() {
        let object: Map<String, Value> =
            serde_json::from_str(r#"{"value": "text", "value_base64": "AAE="}"#).expect("json");
        assert_eq!(take_value(&object), Ok(Some(Bytes::from_static(&[0, 1]))));
        let object: Map<String, Value> =
            serde_json::from_str(r#"{"value_base64": "not base64!"}"#).expect("json");
        assert!(take_value(&object).is_err());
        let object: Map<String, Value> = serde_json::from_str(r#"{"value": 3}"#).expect("json");
        assert!(take_value(&object).is_err());
        assert_eq!(take_value(&Map::new()), Ok(None));
    }

    #[test]
    fn etags_parse_with_or_without_quotes() {
        assert_eq!(parse_etag("\"17\""), Some(17));
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("9"), Some(9));
        assert_eq!(parse_etag("\"x\""), None);
    }
}
