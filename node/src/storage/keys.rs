//! RocksDB key layout. Every key the node writes is built here, so the layout can be read in one
//! place.
//!
//! Column families:
//! - `log`: Raft log entries, key = index as 8 big-endian bytes (so byte order = index order).
//! - `raft`: the vote, the last purged log id and the committed log id, one fixed key each.
//! - `sm`: the whole state machine, prefixed by one tag byte per record kind. Keeping all of it in
//!   one column family makes a snapshot a single ordered scan, and lets an install replace the
//!   state with one range delete. Tags sort the kinds apart; within a kind, the raw key bytes sort
//!   as the API lists them.

use crate::state_machine::DedupKey;

pub const CF_LOG: &str = "log";
pub const CF_RAFT: &str = "raft";
pub const CF_SM: &str = "sm";
pub const COLUMN_FAMILIES: [&str; 3] = [CF_LOG, CF_RAFT, CF_SM];

pub const RAFT_VOTE: &[u8] = b"vote";
pub const RAFT_PURGED: &[u8] = b"purged";
pub const RAFT_COMMITTED: &[u8] = b"committed";
/// This data directory's random storage id, written once when the directory is created.
pub const RAFT_STORAGE_ID: &[u8] = b"storage_id";

const TAG_ACCOUNT: u8 = b'a';
const TAG_DEDUP_IDEMPOTENCY: u8 = b'i';
const TAG_KV: u8 = b'k';
const TAG_META: u8 = b'm';
const TAG_STORAGE: u8 = b's';
const TAG_DEDUP_TRANSFER: u8 = b't';
const TAG_EXPIRY: u8 = b'x';

/// State machine bookkeeping that lives in `sm` so snapshots carry it.
pub const SM_META: &[u8] = b"m/sm";
pub const SM_APPLIED: &[u8] = b"m/applied";
pub const SM_MEMBERSHIP: &[u8] = b"m/membership";
/// The zone settings and state (`state_machine::ZoneRecord`).
pub const SM_ZONES: &[u8] = b"m/zones";
/// Present while a snapshot install is half done; see `storage::state`.
pub const SM_INSTALLING: &[u8] = b"m/installing";

/// The whole `sm` keyspace, for a range delete: [`SM_FIRST`, `SM_END`).
pub const SM_FIRST: &[u8] = &[0x00];
pub const SM_END: &[u8] = &[0xff, 0xff, 0xff, 0xff];

pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn tagged(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(rest.len() + 1);
    key.push(tag);
    key.extend_from_slice(rest);
    key
}

pub fn kv(key: &str) -> Vec<u8> {
    tagged(TAG_KV, key.as_bytes())
}

/// The user key of a `kv` storage key, or `None` if `raw` is not one.
pub fn kv_user_key(raw: &[u8]) -> Option<&[u8]> {
    raw.strip_prefix(&[TAG_KV])
}

pub fn account(id: &str) -> Vec<u8> {
    tagged(TAG_ACCOUNT, id.as_bytes())
}

pub fn account_id(raw: &[u8]) -> Option<&[u8]> {
    raw.strip_prefix(&[TAG_ACCOUNT])
}

/// The storage id recorded for member `node`.
pub fn member_storage(node: u64) -> Vec<u8> {
    tagged(TAG_STORAGE, &node.to_be_bytes())
}

pub fn member_storage_prefix() -> [u8; 1] {
    [TAG_STORAGE]
}

/// The member of a `member_storage` key.
pub fn member_storage_node(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        raw.strip_prefix(&[TAG_STORAGE])?.try_into().ok()?,
    ))
}

pub fn dedup(key: &DedupKey) -> Vec<u8> {
    match key {
        DedupKey::Idempotency(k) => tagged(TAG_DEDUP_IDEMPOTENCY, k.as_bytes()),
        DedupKey::Transfer(id) => tagged(TAG_DEDUP_TRANSFER, id.as_bytes()),
    }
}

/// Expiry index entry: tag, recorded_ms (big-endian, so oldest first), kind tag, key.
pub fn expiry(recorded_ms: u64, key: &DedupKey) -> Vec<u8> {
    let mut out = vec![TAG_EXPIRY];
    out.extend_from_slice(&recorded_ms.to_be_bytes());
    out.extend_from_slice(&dedup(key));
    out
}

pub fn expiry_prefix() -> [u8; 1] {
    [TAG_EXPIRY]
}

/// The first expiry index key past every record with `recorded_ms <= ms`: the exclusive upper
/// bound of a search for those records.
pub fn expiry_bound_after(ms: u64) -> Vec<u8> {
    match ms.checked_add(1) {
        Some(next) => {
            let mut out = vec![TAG_EXPIRY];
            out.extend_from_slice(&next.to_be_bytes());
            out
        }
        None => vec![TAG_EXPIRY + 1],
    }
}

/// Decode an expiry index key into (recorded_ms, dedup key).
pub fn parse_expiry(raw: &[u8]) -> Option<(u64, DedupKey)> {
    let rest = raw.strip_prefix(&[TAG_EXPIRY])?;
    let (ms, rest) = rest.split_at_checked(8)?;
    let ms = u64::from_be_bytes(ms.try_into().ok()?);
    let (&tag, name) = rest.split_first()?;
    let name = String::from_utf8(name.to_vec()).ok()?;
    let key = match tag {
        TAG_DEDUP_IDEMPOTENCY => DedupKey::Idempotency(name),
        TAG_DEDUP_TRANSFER => DedupKey::Transfer(name),
        _ => return None,
    };
    Some((ms, key))
}

/// The first key after every key that starts with `prefix`, or `None` if there is none
/// (the prefix is all 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Checks that the tags used above keep [`SM_FIRST`]..[`SM_END`] covering all of `sm`.
const _: () = assert!(TAG_META < 0xff && TAG_ACCOUNT > 0x00);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index() {
        let mut keys: Vec<_> = [5u64, 300, 0, 70_000, u64::MAX]
            .iter()
            .map(|i| log_key(*i))
            .collect();
        keys.sort();
        let back: Vec<_> = keys.iter().map(|k| log_index(k).unwrap()).collect();
        assert_eq!(back, vec![0, 5, 300, 70_000, u64::MAX]);
        assert_eq!(log_index(b"short"), None);
    }

    #[test]
    fn expiry_round_trips_and_sorts_by_time() {
        let a = expiry(5, &DedupKey::Transfer("zz".into()));
        let b = expiry(300, &DedupKey::Idempotency("aa".into()));
        assert!(a < b);
        assert_eq!(parse_expiry(&a), Some((5, DedupKey::Transfer("zz".into()))));
        assert_eq!(
            parse_expiry(&b),
            Some((300, DedupKey::Idempotency("aa".into())))
        );
        assert_eq!(parse_expiry(b"x123"), None);
        assert_eq!(parse_expiry(&kv("a")), None);
    }

    #[test]
    fn kinds_do_not_collide() {
        assert_ne!(kv("a"), account("a"));
        assert_ne!(
            dedup(&DedupKey::Idempotency("a".into())),
            dedup(&DedupKey::Transfer("a".into()))
        );
        assert_eq!(kv_user_key(&kv("héllo")), Some("héllo".as_bytes()));
        assert_eq!(member_storage_node(&member_storage(7)), Some(7));
        assert_eq!(member_storage_node(&kv("a")), None);
        assert_eq!(kv_user_key(&account("a")), None);
        for key in [
            kv("a"),
            account("a"),
            SM_META.to_vec(),
            member_storage(u64::MAX),
            expiry(1, &DedupKey::Transfer("t".into())),
        ] {
            assert!(key.as_slice() >= SM_FIRST && key.as_slice() < SM_END);
        }
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
