//! Snapshot files: the state machine's column family, written from a consistent RocksDB view into
//! one file that can be streamed to a follower in chunks and checked before it is installed.
//! The format (framing, record count, checksum) is `metrokv_api::snapshot_file`'s, shared with
//! the client, which checks backups (they are snapshot files) the same way; the meta in the
//! header is openraft's `SnapshotMeta` (postcard, with our version byte).
//!
//! A file is written under a temporary name, fsync'd, then renamed, so a crash never leaves a
//! half-written file under a snapshot name. Readers verify the checksum before trusting
//! anything but the header; a record larger than [`limits::SNAPSHOT_RECORD_BYTES_MAX`] is
//! corruption, refused before allocating.

use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use metrokv_api::snapshot_file::FrameReader;
use metrokv_api::snapshot_file::FrameWriter;

use super::decode;
use super::encode;
use crate::limits;
use crate::raft::types::SnapshotMeta;

const FILE_PREFIX: &str = "snapshot-";
const FILE_SUFFIX: &str = ".snap";

/// A complete snapshot file: openraft's `SnapshotData` for this node.
///
/// It holds an open handle, so the content stays readable even after a newer snapshot replaces
/// the file (the old one is unlinked, not overwritten). Read it with positioned reads
/// ([`read_at`]), never by reopening the path, which a newer snapshot may have removed.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
    pub len: u64,
}

impl SnapshotFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
        })
    }
}

/// Fill `buf` from `file` at `offset`, short only at the end of the file.
pub fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A reader over a shared file handle with a position of its own.
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The meta of the snapshot in an open file (the header only; see [`verify`] for the rest).
pub fn read_meta(file: &File) -> io::Result<SnapshotMeta> {
    let (meta, _) = SnapshotReader::new(BufReader::with_capacity(64 * 1024, At { file, pos: 0 }))?;
    Ok(meta)
}

/// Writes a snapshot file record by record.
pub struct SnapshotWriter {
    tmp_path: PathBuf,
    final_path: PathBuf,
    out: FrameWriter<BufWriter<File>>,
}

impl SnapshotWriter {
    /// Start a snapshot in `dir`; `unique` keeps concurrent writers apart.
    pub fn create(dir: &Path, meta: &SnapshotMeta, unique: u64) -> io::Result<Self> {
        let (term, index) = meta
            .last_log_id
            .as_ref()
            .map_or((0, 0), |id| (id.leader_id.term, id.index));
        let name = format!("{FILE_PREFIX}{index:020}-{term:010}-{unique:016x}");
        let final_path = dir.join(format!("{name}{FILE_SUFFIX}"));
        let tmp_path = dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp_path)?;
        let out = FrameWriter::new(
            BufWriter::with_capacity(1 << 20, file),
            &encode(meta),
            limits::SNAPSHOT_RECORD_BYTES_MAX,
        )?;
        Ok(Self {
            tmp_path,
            final_path,
            out,
        })
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.out.record(key, value)
    }

    /// Seal, fsync and rename the file into place; returns its final path.
    pub fn finish(self) -> io::Result<PathBuf> {
        let (out, _records) = self.out.finish()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp_path, &self.final_path)?;
        sync_dir(self.final_path.parent().unwrap_or(Path::new(".")))?;
        Ok(self.final_path)
    }
}

/// fsync a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a snapshot file: the header, then the records in order.
pub struct SnapshotReader<R> {
    inner: FrameReader<R>,
}

impl SnapshotReader<BufReader<File>> {
    pub fn open(path: &Path) -> io::Result<(SnapshotMeta, Self)> {
        let file = File::open(path)?;
        SnapshotReader::new(BufReader::with_capacity(1 << 20, file))
    }
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> io::Result<(SnapshotMeta, Self)> {
        let (meta, inner) = FrameReader::new(input, limits::SNAPSHOT_RECORD_BYTES_MAX)?;
        let meta = decode(&meta, "snapshot meta")?;
        Ok((meta, Self { inner }))
    }

    /// The next record, or `None` after the last one (once the trailer checked out).
    pub fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.next_record()
    }
}

/// Read a whole file and check it, returning its meta. Run before installing a received file.
pub fn verify(path: &Path) -> io::Result<SnapshotMeta> {
    let (meta, mut reader) = SnapshotReader::open(path)?;
    while reader.next_record()?.is_some() {}
    Ok(meta)
}

/// Complete snapshot files in `dir`, oldest first (by last log index, then term).
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX) {
            found.push(path);
        }
    }
    // The zero-padded index then term in the name sort like the log ids.
    found.sort();
    Ok(found)
}

/// Remove every file in `dir` but `keep`: older snapshots and temporary files left by a crash.
/// Subdirectories (incoming transfers) are left alone.
pub fn remove_all_but(dir: &Path, keep: Option<&Path>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if Some(path.as_path()) != keep && path.is_file() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A snapshot arriving in chunks from a leader, written in order to one file of the incoming
/// directory. A chunk at any offset but the next one ends the transfer (the file is removed and
/// the leader starts over); after the last chunk the file is fsync'd and ready to verify.
/// Blocking: call from `spawn_blocking`.
#[derive(Debug)]
pub struct Incoming {
    pub transfer_id: u64,
    path: PathBuf,
    file: File,
    written: u64,
}

/// Why a chunk was refused; the transfer is over and its file removed.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("chunk at offset {offset} but {written} bytes were received; start over")]
    OutOfOrder { offset: u64, written: u64 },
    #[error("cannot write the snapshot {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl Incoming {
    /// Start receiving transfer `transfer_id` from `from` into `dir`.
    pub fn create(dir: &Path, from: u64, transfer_id: u64) -> Result<Self, IncomingError> {
        let path = dir.join(format!("from-{from}-{transfer_id:016x}.snap"));
        let file = File::create(&path).map_err(|source| IncomingError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            transfer_id,
            path,
            file,
            written: 0,
        })
    }

    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Append the chunk at `offset`; with `done`, fsync the file. On error the file is removed.
    pub fn append(&mut self, offset: u64, data: &[u8], done: bool) -> Result<(), IncomingError> {
        if offset != self.written {
            let written = self.written;
            self.abandon();
            return Err(IncomingError::OutOfOrder { offset, written });
        }
        let result =
            self.file.write_all(data).and_then(
                |()| {
                    if done {
                        self.file.sync_all()
                    } else {
                        Ok(())
                    }
                },
            );
        if let Err(source) = result {
            self.abandon();
            return Err(IncomingError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// The complete file, for verifying and installing; the caller removes it after.
    pub fn into_path(self) -> PathBuf {
        self.path
    }

    /// Give the transfer up and remove its file.
    pub fn abandon(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta::default()
    }

    fn write(dir: &Path, records: &[(&[u8], &[u8])]) -> PathBuf {
        let mut w = SnapshotWriter::create(dir, &meta(), 1).unwrap();
        for (k, v) in records {
            w.record(k, v).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[(b"a", b"1"), (b"b", b"")]);
        let (m, mut r) = SnapshotReader::open(&path).unwrap();
        assert_eq!(m, meta());
        assert_eq!(
            r.next_record().unwrap(),
            Some((b"a".to_vec(), b"1".to_vec()))
        );
        assert_eq!(r.next_record().unwrap(), Some((b"b".to_vec(), vec![])));
        assert_eq!(r.next_record().unwrap(), None);
        assert_eq!(list(dir.path()).unwrap(), vec![path]);
    }

    #[test]
    fn corruption_and_truncation_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[(b"key", b"value")]);
        let good = std::fs::read(&path).unwrap();
        for cut in [0, 5, 12, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(verify(&path).is_err(), "truncated at {cut} must fail");
        }
        for flip in [9, good.len() - 14, good.len() - 6] {
            let mut bytes = good.clone();
            bytes[flip] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            assert!(verify(&path).is_err(), "flipped byte {flip} must fail");
        }
        std::fs::write(&path, &good).unwrap();
        assert!(verify(&path).is_ok());
    }

    /// A file whose trailer counts other records than it holds is refused, even with a valid
    /// checksum (which covers the count, so it is recomputed here as a forger would).
    #[test]
    fn a_wrong_record_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[(b"a", b"1")]);
        let mut bytes = std::fs::read(&path).unwrap();
        let count_at = bytes.len() - 12;
        bytes[count_at..count_at + 8].copy_from_slice(&2u64.to_be_bytes());
        let crc = crc32fast::hash(&bytes[..bytes.len() - 4]);
        let crc_at = bytes.len() - 4;
        bytes[crc_at..].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err();
        assert!(err.to_string().contains("counts 2 records"), "{err}");
    }

    #[test]
    fn oversized_record_length_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[]);
        let mut bytes = std::fs::read(&path).unwrap();
        // Replace the end marker with a huge key length.
        let at = bytes.len() - 16;
        bytes[at..at + 4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[test]
    fn incoming_chunks_must_arrive_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::create(dir.path(), 2, 7).unwrap();
        incoming.append(0, b"abc", false).unwrap();
        incoming.append(3, b"de", false).unwrap();
        assert_eq!(incoming.written(), 5);
        // A repeated chunk (a retry of one that arrived) ends the transfer: the leader restarts.
        let err = incoming.append(3, b"de", false).unwrap_err();
        assert!(matches!(
            err,
            IncomingError::OutOfOrder {
                offset: 3,
                written: 5
            }
        ));
        assert!(
            list_files(dir.path()).is_empty(),
            "the partial file is removed"
        );

        let mut incoming = Incoming::create(dir.path(), 2, 8).unwrap();
        incoming.append(0, b"whole", true).unwrap();
        let path = incoming.into_path();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    }

    fn list_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}
