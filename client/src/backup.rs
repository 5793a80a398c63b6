//! Backups: `GET /v1/backup` streamed to a file, and the file checked (`metrokv backup save`,
//! `metrokv backup verify`). The format is `metrokv_api::snapshot_file`'s, the same the node
//! checks before it restores one.

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

use metrokv_api::snapshot_file::BackupInfo;

use crate::error::ErrorAnswer;
use crate::error::Subject;
use crate::Client;
use crate::Error;
use crate::Result;

/// Largest record a backup may hold (a key, a value of the largest size, and the encoding
/// around them), for checking a file without the node's limits.
const RECORD_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A backup written to a file and checked.
#[derive(Clone, Debug)]
pub struct SavedBackup {
    pub path: PathBuf,
    pub bytes: u64,
    pub records: u64,
    pub info: BackupInfo,
    /// The node that wrote it.
    pub node: String,
}

/// Check a backup file whole (framing, record count, checksum); what it holds.
pub fn verify(path: &Path) -> Result<(BackupInfo, u64)> {
    let io = |e: std::io::Error| Error::Config {
        message: format!("{}: {e}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let scanned = metrokv_api::snapshot_file::scan(
        std::io::BufReader::with_capacity(1 << 20, file),
        RECORD_BYTES_MAX,
    )
    .map_err(io)?;
    let info = scanned.info.ok_or_else(|| Error::Config {
        message: format!(
            "{}: an intact snapshot file, but not a backup (no backup description)",
            path.display()
        ),
    })?;
    Ok((info, scanned.records))
}

impl Client {
    /// Stream a consistent backup of the whole cluster into `path` (written under a temporary
    /// name, checked, then renamed), calling `progress(done, total)` as bytes arrive. Every
    /// write acknowledged before the call is in it. Nodes are tried in turn until one answers.
    pub async fn backup_to(
        &self,
        path: &Path,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<SavedBackup> {
        let io = |e: std::io::Error| Error::Config {
            message: format!("{}: {e}", path.display()),
        };
        let tmp = path.with_extension("partial");
        let endpoints = &self.transport.endpoints;
        let mut last: Option<Error> = None;
        let started = Instant::now();
        for index in endpoints.plan(started) {
            let node = endpoints.url(index).to_string();
            // No timeout for the whole answer (a large backup takes long); the wait for its
            // start and for each chunk is bounded by the deadline instead.
            let wait = self.budget.deadline;
            let request = self.request(reqwest::Method::GET, &format!("{node}/v1/backup"));
            let sent = match tokio::time::timeout(wait, request.send()).await {
                Ok(sent) => sent.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", wait.as_millis())),
            };
            let mut response = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = Some(Error::Protocol {
                        node: node.clone(),
                        message: format!("cannot fetch a backup: {e}"),
                    });
                    continue;
                }
            };
            let status = response.status().as_u16();
            if status != 200 {
                let body = response.bytes().await.unwrap_or_default();
                let error =
                    ErrorAnswer::parse(status, &body).into_error(&Subject::Other, None, &node);
                // A node that cannot serve (no leader, overloaded, a witness) may not be the
                // only one; anything else is an answer for every node.
                if status >= 500 {
                    last = Some(error);
                    continue;
                }
                return Err(error);
            }
            let total = response.content_length();
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
            let mut done = 0u64;
            let streamed: std::result::Result<(), Error> = async {
                loop {
                    let chunk = match tokio::time::timeout(wait, response.chunk()).await {
                        Ok(chunk) => chunk.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("nothing arrived for {} ms", wait.as_millis())),
                    }
                    .map_err(|e| Error::Protocol {
                        node: node.clone(),
                        message: format!("the backup stream broke off after {done} bytes: {e}"),
                    })?;
                    let Some(chunk) = chunk else { break };
                    out.write_all(&chunk).map_err(io)?;
                    done += chunk.len() as u64;
                    progress(done, total);
                }
                let file = out.into_inner().map_err(|e| io(e.into_error()))?;
                file.sync_all().map_err(io)?;
                Ok(())
            }
            .await;
            if let Err(e) = streamed {
                let _ = std::fs::remove_file(&tmp);
                last = Some(e);
                continue;
            }
            let (info, records) = match verify(&tmp) {
                Ok(v) => v,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            std::fs::rename(&tmp, path).map_err(io)?;
            return Ok(SavedBackup {
                path: path.to_path_buf(),
                bytes: done,
                records,
                info,
                node,
            });
        }
        Err(last.unwrap_or_else(|| Error::Config {
            message: "no endpoint to take a backup from".into(),
        }))
    }
}
