//! Values inside JSON bodies: `value` when the bytes are UTF-8, else `value_base64`, exactly one
//! of the two. A struct that carries a value has both fields (`Option<String>`); these functions
//! are the one place that fills and reads them.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// Why a JSON value could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("missing value (or value_base64)")]
    Missing,
    #[error("give value or value_base64, not both")]
    Both,
    #[error("value_base64 is not valid base64: {0}")]
    Base64(String),
}

/// The two JSON fields for `bytes`: `(value, value_base64)`.
pub fn fields(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(bytes))),
    }
}

/// The bytes from the two JSON fields, exactly one of which must be present.
pub fn bytes(value: Option<&str>, value_base64: Option<&str>) -> Result<Vec<u8>, ValueError> {
    match (value, value_base64) {
        (Some(text), None) => Ok(text.as_bytes().to_vec()),
        (None, Some(encoded)) => BASE64
            .decode(encoded)
            .map_err(|e| ValueError::Base64(e.to_string())),
        (Some(_), Some(_)) => Err(ValueError::Both),
        (None, None) => Err(ValueError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_as_utf8_or_base64() {
        for value in [
            &b"hello"[..],
            &[0xff, 0x00, 0xfe][..],
            &b""[..],
            "é".as_bytes(),
        ] {
            let (text, encoded) = fields(value);
            assert_eq!(text.is_some(), std::str::from_utf8(value).is_ok());
            assert_eq!(bytes(text.as_deref(), encoded.as_deref()).unwrap(), value);
        }
        assert_eq!(bytes(None, None), Err(ValueError::Missing));
        assert_eq!(bytes(Some("a"), Some("AA==")), Err(ValueError::Both));
        assert!(matches!(
            bytes(None, Some("!!")),
            Err(ValueError::Base64(_))
        ));
    }
}
