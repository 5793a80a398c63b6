//! Throwaway TLS certificates for test nodes, and the flags that give a node its own: one
//! definition for the end-to-end tests and the partition harness.

use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;

/// Writes a CA and certificates for members `1..=nodes` into `dir` with `binary certs`
/// (`metrokv-node certs`), each also naming `ips` besides 127.0.0.1; the CA's path.
pub fn write(binary: &Path, dir: &Path, nodes: u64, ips: &[String]) -> anyhow::Result<PathBuf> {
    let mut command = std::process::Command::new(binary);
    command
        .args(["certs", "--nodes", &nodes.to_string(), "--dir"])
        .arg(dir);
    for ip in ips {
        command.args(["--ip", ip]);
    }
    let out = command
        .output()
        .with_context(|| format!("running {} certs", binary.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "metrokv-node certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir.join("ca.pem"))
}

/// The flags of member `id` for TLS on both ports, with the certificates [`write()`] put in
/// `dir`.
pub fn node_args(dir: &Path, id: u64) -> Vec<String> {
    let file = |ext: &str| dir.join(format!("node-{id}.{ext}")).display().to_string();
    vec![
        "--tls-cert".to_owned(),
        file("pem"),
        "--tls-key".to_owned(),
        file("key"),
        "--peer-tls-cert".to_owned(),
        file("pem"),
        "--peer-tls-key".to_owned(),
        file("key"),
        "--peer-ca".to_owned(),
        dir.join("ca.pem").display().to_string(),
    ]
}
