//! The snapshot file format, shared by the node (Raft snapshots, `GET /v1/backup`) and the
//! client (`metrokv backup save|verify`): a backup is a snapshot file, checked the same way.
//!
//! Layout (all integers big-endian):
//! ```text
//! "MKVSNAP1"                      magic and format version
//! u32 meta_len, meta              the node's snapshot meta (opaque here)
//! { u32 key_len, u32 value_len, key, value }*      the state machine's records in key order
//! u32 0xFFFF_FFFF, u64 record_count, u32 crc32     end marker; crc over every byte before it
//! ```
//! A backup carries one record more, first: [`BACKUP_INFO_KEY`] with a JSON [`BackupInfo`], so
//! a file says what it holds without the node's types. The node never stores that record.

use std::io;
use std::io::Read;
use std::io::Write;

use serde::Deserialize;
use serde::Serialize;

pub const MAGIC: &[u8; 8] = b"MKVSNAP1";
const END_MARKER: u32 = u32::MAX;

/// The key of a backup's description record (sorts before every state machine key, which are
/// tagged with a letter).
pub const BACKUP_INFO_KEY: &[u8] = b"!backup";

/// Largest snapshot meta, in bytes (a membership of many members is a few KiB).
pub const META_BYTES_MAX: usize = 1024 * 1024;

/// What a backup holds: written by the node that took it, read by `metrokv backup verify` and
/// `metrokv-node restore`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The cluster it was taken from.
    pub cluster_id: String,
    /// The node that wrote it.
    pub node: u64,
    /// The state machine's revision: every write with a revision up to this one is in the
    /// backup, none above it.
    pub revision: u64,
    /// The last log entry applied to the state it holds: its index and term.
    pub applied_index: u64,
    pub applied_term: u64,
    /// The cluster's replicated clock then (ms since the Unix epoch).
    pub taken_at_ms: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes the framing: header, records, trailer. Buffering and fsync are the caller's.
pub struct FrameWriter<W> {
    out: W,
    crc: crc32fast::Hasher,
    records: u64,
    record_bytes_max: usize,
}

impl<W: Write> FrameWriter<W> {
    /// Write the header with `meta` (already encoded); records past `record_bytes_max` (key,
    /// value and their lengths) are refused.
    pub fn new(out: W, meta: &[u8], record_bytes_max: usize) -> io::Result<Self> {
        if meta.len() > META_BYTES_MAX {
            return Err(bad("snapshot meta too large"));
        }
        let mut w = Self {
            out,
            crc: crc32fast::Hasher::new(),
            records: 0,
            record_bytes_max,
        };
        w.put(MAGIC)?;
        w.put(&(meta.len() as u32).to_be_bytes())?;
        w.put(meta)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.len() + value.len() + 8 > self.record_bytes_max {
            return Err(bad(format!(
                "snapshot record of {} bytes is over the limit",
                key.len() + value.len()
            )));
        }
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Write the trailer; returns the output and the number of records.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.put(&END_MARKER.to_be_bytes())?;
        let records = self.records;
        self.put(&records.to_be_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_be_bytes())?;
        Ok((self.out, records))
    }
}

/// Reads the framing: the header, then the records in order, checking the trailer's count and
/// checksum at the end. Nothing but the header may be trusted before [`FrameReader::next_record`]
/// returned `None`.
pub struct FrameReader<R> {
    input: R,
    crc: crc32fast::Hasher,
    done: bool,
    records: u64,
    record_bytes_max: usize,
}

impl<R: Read> FrameReader<R> {
    /// Read the header; the meta's bytes and the reader positioned at the first record.
    pub fn new(input: R, record_bytes_max: usize) -> io::Result<(Vec<u8>, Self)> {
        let mut r = Self {
            input,
            crc: crc32fast::Hasher::new(),
            done: false,
            records: 0,
            record_bytes_max,
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("not a metrokv snapshot file (bad magic)"));
        }
        let meta_len = r.read_u32()? as usize;
        if meta_len > META_BYTES_MAX {
            return Err(bad("snapshot meta length is implausible"));
        }
        let mut meta = vec![0u8; meta_len];
        r.read_exact(&mut meta)?;
        Ok((meta, r))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => bad("snapshot file is truncated"),
            _ => e,
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// The next record, or `None` after the last one (once the trailer checked out).
    pub fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let key_len = self.read_u32()?;
        if key_len == END_MARKER {
            let mut count = [0u8; 8];
            self.read_exact(&mut count)?;
            let want = self.crc.clone().finalize();
            let mut crc = [0u8; 4];
            self.input
                .read_exact(&mut crc)
                .map_err(|_| bad("snapshot file is truncated"))?;
            if u32::from_be_bytes(crc) != want {
                return Err(bad("snapshot checksum mismatch"));
            }
            // The checksum covers the count, so only a writer bug (or a forged file) gets here
            // with a wrong one; either way the file does not hold what it says.
            let count = u64::from_be_bytes(count);
            if count != self.records {
                return Err(bad(format!(
                    "snapshot trailer counts {count} records, the file holds {}",
                    self.records
                )));
            }
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest)? != 0 {
                return Err(bad("bytes after the snapshot trailer"));
            }
            self.done = true;
            return Ok(None);
        }
        let value_len = self.read_u32()?;
        let total = key_len as usize + value_len as usize;
        if total + 8 > self.record_bytes_max {
            return Err(bad(format!(
                "snapshot record of {total} bytes is over the limit"
            )));
        }
        let mut key = vec![0u8; key_len as usize];
        self.read_exact(&mut key)?;
        let mut value = vec![0u8; value_len as usize];
        self.read_exact(&mut value)?;
        self.records += 1;
        Ok(Some((key, value)))
    }
}

/// What [`scan`] found in a whole, valid file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Records, the backup description included.
    pub records: u64,
    /// The backup description, if the file is a backup (a Raft snapshot has none).
    pub info: Option<BackupInfo>,
}

/// Read a whole file and check its framing, count and checksum.
pub fn scan(input: impl Read, record_bytes_max: usize) -> io::Result<Scanned> {
    let (_meta, mut reader) = FrameReader::new(input, record_bytes_max)?;
    let mut info = None;
    let mut records = 0;
    while let Some((key, value)) = reader.next_record()? {
        if records == 0 && key == BACKUP_INFO_KEY {
            info = Some(
                serde_json::from_slice(&value)
                    .map_err(|e| bad(format!("the backup description is corrupt: {e}")))?,
            );
        }
        records += 1;
    }
    Ok(Scanned { records, info })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new(), b"meta", 1 << 20).unwrap();
        for (k, v) in records {
            w.record(k, v).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn a_backup_round_trips_with_its_description() {
        let info = BackupInfo {
            cluster_id: "c".into(),
            node: 2,
            revision: 41,
            applied_index: 57,
            applied_term: 3,
            taken_at_ms: 1_700_000_000_000,
        };
        let json = serde_json::to_vec(&info).unwrap();
        let bytes = file(&[(BACKUP_INFO_KEY, &json), (b"k1", b"v1"), (b"k2", b"")]);
        let scanned = scan(&bytes[..], 1 << 20).unwrap();
        assert_eq!(scanned.records, 3);
        assert_eq!(scanned.info, Some(info));
        let (meta, mut r) = FrameReader::new(&bytes[..], 1 << 20).unwrap();
        assert_eq!(meta, b"meta");
        assert_eq!(r.next_record().unwrap().unwrap().0, BACKUP_INFO_KEY);
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_detected() {
        let bytes = file(&[(b"key", b"value"), (b"other", b"x")]);
        assert_eq!(scan(&bytes[..], 1 << 20).unwrap().info, None);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                assert!(scan(&bad[..], 1 << 20).is_err(), "bit {bit:#x} of byte {i}");
            }
            assert!(scan(&bytes[..i], 1 << 20).is_err(), "truncated to {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(scan(&longer[..], 1 << 20).is_err(), "trailing garbage");
    }

    #[test]
    fn an_oversized_record_is_refused_before_it_is_read() {
        let bytes = file(&[(b"key", &[7u8; 100])]);
        assert!(scan(&bytes[..], 64).is_err());
        let mut w = FrameWriter::new(Vec::new(), b"", 64).unwrap();
        assert!(w.record(b"k", &[0u8; 100]).is_err());
    }
}
