//! Wire encodings: keys and ids in URL paths and queries, and values inside JSON bodies.
//!
//! Invariants:
//! - A path segment is percent-encoded except for RFC 3986 unreserved characters, so `/`, `?`,
//!   `%`, `#` and spaces in keys never change which route is hit.
//! - The segments `.` and `..` are refused: URL parsers resolve them (even as `%2E`) before the
//!   request leaves, so such a key would silently address another resource. Those keys are still
//!   reachable through `POST /v1/txn`, which carries keys in the body.
//! - JSON values use `value` when the bytes are UTF-8 and `value_base64` otherwise
//!   (`metrokv_api::value`).
//!
//! Left out: the HTTP calls themselves (see `transport.rs`).

use percent_encoding::utf8_percent_encode;
use percent_encoding::AsciiSet;
use percent_encoding::NON_ALPHANUMERIC;

use crate::error::Error;
#[cfg(test)]
use crate::limits::ID_BYTES_MAX;
#[cfg(test)]
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
pub(crate) fn id_path_segment(what: &'static str, id: &str) -> Result<String, Error> {
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

/// Checks a key against docs/api.md (`metrokv_api::validate`, as the node does); keys inside a
/// txn body are checked here too.
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    metrokv_api::validate::key(key).map_err(|e| Error::InvalidRequest {
        message: e.to_string(),
    })
}

/// Checks an account or transfer id as the node does (1..=128 characters of
/// `A-Z a-z 0-9 . _ : -`).
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<(), Error> {
    metrokv_api::validate::id(what, id).map_err(|e| Error::InvalidRequest {
        message: e.to_string(),
    })
}

/// Checks an `Idempotency-Key` as the node does.
pub(crate) fn check_idempotency_key(key: &str) -> Result<(), Error> {
    metrokv_api::validate::idempotency_key(key).map_err(|e| Error::InvalidRequest {
        message: e.to_string(),
    })
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

/// Serde helper: serializes a value as docs/api.md does, `value` or `value_base64`, into a map that
/// is being built (used by the manual `Serialize` impls of result types).
pub(crate) fn serialize_value_field<M: serde::ser::SerializeMap>(
    map: &mut M,
    value: &[u8],
) -> Result<(), M::Error> {
    match metrokv_api::value::fields(value) {
        (Some(text), _) => map.serialize_entry("value", &text),
        (None, encoded) => map.serialize_entry("value_base64", &encoded),
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
    fn etags_parse_with_or_without_quotes() {
        assert_eq!(parse_etag("\"17\""), Some(17));
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("9"), Some(9));
        assert_eq!(parse_etag("\"x\""), None);
    }
}
