//! The checks on keys and ids that both the node and the client run: the node as the authority,
//! the client to fail fast without a round trip.

use crate::limits;

/// Why a key or id is refused (400 `invalid_request`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the key is empty")]
    EmptyKey,
    #[error("the key is {0} bytes; keys are at most {max} bytes", max = limits::KEY_BYTES_MAX)]
    KeyTooLong(usize),
    #[error("{what} {id:?} is invalid: use 1..={max} characters of A-Z a-z 0-9 . _ : -", max = limits::ID_BYTES_MAX)]
    Id { what: &'static str, id: String },
    #[error("Idempotency-Key must be 1..={max} bytes of visible ASCII", max = limits::IDEMPOTENCY_KEY_BYTES_MAX)]
    IdempotencyKey,
}

/// A key: 1..=[`limits::KEY_BYTES_MAX`] bytes of UTF-8.
pub fn key(key: &str) -> Result<(), Invalid> {
    if key.is_empty() {
        return Err(Invalid::EmptyKey);
    }
    if key.len() > limits::KEY_BYTES_MAX {
        return Err(Invalid::KeyTooLong(key.len()));
    }
    Ok(())
}

/// An account or transfer id: 1..=[`limits::ID_BYTES_MAX`] characters of `A-Z a-z 0-9 . _ : -`,
/// so it is safe in paths and logs. `what` names it in the message.
pub fn id(what: &'static str, id: &str) -> Result<(), Invalid> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if id.is_empty() || id.len() > limits::ID_BYTES_MAX || !id.chars().all(ok_char) {
        return Err(Invalid::Id {
            what,
            id: id.to_string(),
        });
    }
    Ok(())
}

/// An `Idempotency-Key`: 1..=[`limits::IDEMPOTENCY_KEY_BYTES_MAX`] bytes of visible ASCII.
pub fn idempotency_key(key: &str) -> Result<(), Invalid> {
    let visible = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if key.is_empty() || key.len() > limits::IDEMPOTENCY_KEY_BYTES_MAX || !visible {
        return Err(Invalid::IdempotencyKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ids_are_checked() {
        assert!(id("account", "alice-1_b.c:d").is_ok());
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(id("account", bad).is_err(), "{bad:?}");
        }
        assert!(key("k").is_ok());
        assert_eq!(key(""), Err(Invalid::EmptyKey));
        assert!(key(&"k".repeat(limits::KEY_BYTES_MAX)).is_ok());
        assert!(key(&"k".repeat(limits::KEY_BYTES_MAX + 1)).is_err());
        assert!(idempotency_key("k-1").is_ok());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key(&"k".repeat(129)).is_err());
    }
}
