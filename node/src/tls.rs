//! TLS (rustls, ring provider): the client API over HTTPS (`--tls-cert`, `--tls-key`, and with
//! `--client-ca` client certificates required), and mutual TLS between members
//! (`--peer-tls-cert`, `--peer-tls-key`, `--peer-ca`).
//!
//! A member's certificate names it: a DNS name `node-<id>` (see [`member_name`]), issued by the
//! cluster CA. The dialer checks that the peer it reached holds the certificate of the member it
//! meant to reach; the acceptor requires a client certificate from the CA, so a peer without one
//! is refused during the TLS handshake, before any frame is read, and then requires the member
//! id the handshake claims to be the one its certificate names (see `transport::server`).
//!
//! The files are read again when they change (checked every [`RELOAD_POLL`]) and on SIGHUP; a
//! new connection uses the new certificates, open ones keep theirs. A set of files that does
//! not load (a key that does not match, a half-written file) is logged and the old one kept.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::ServerConfig;

/// How often certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// The DNS name a member's certificate carries.
pub fn member_name(id: u64) -> String {
    format!("node-{id}")
}

/// The member ids a certificate names (`node-<id>` DNS names).
pub fn member_ids(cert: &CertificateDer<'_>) -> Vec<u64> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return vec![];
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => {
                dns.strip_prefix("node-")?.parse().ok()
            }
            _ => None,
        })
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificate, key and (optional) CA files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.cert.as_path(), self.key.as_path()];
        p.extend(self.ca.as_deref());
        p
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(store))
}

/// The client API's server config.
fn api_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Both sides of the peer transport.
pub struct PeerConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

fn peer_configs(files: &TlsFiles) -> Result<PeerConfigs, String> {
    let ca = files
        .ca
        .as_deref()
        .ok_or("mutual TLS between members needs --peer-ca")?;
    let roots = roots(ca)?;
    let (chain, key) = (certs(&files.cert)?, key(&files.key)?);
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| e.to_string())?,
        )
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| e.to_string())?;
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    Ok(PeerConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// A TLS configuration kept current with its files.
pub struct Reloading<T> {
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<T, String>,
    current: RwLock<Arc<T>>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
    what: &'static str,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish()
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    files
        .paths()
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl<T> Reloading<T> {
    fn load(
        files: TlsFiles,
        build: fn(&TlsFiles) -> Result<T, String>,
        what: &'static str,
    ) -> Result<Self, String> {
        let stamps_now = stamps(&files);
        let current = build(&files).map_err(|e| format!("{what}: {e}"))?;
        Ok(Self {
            files,
            build,
            current: RwLock::new(Arc::new(current)),
            stamps: RwLock::new(stamps_now),
            what,
        })
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Load the files again if they changed (or `force`).
    pub fn reload(&self, force: bool) {
        let now = stamps(&self.files);
        if !force && now == *self.stamps.read().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        *self.stamps.write().unwrap_or_else(|e| e.into_inner()) = now;
        match (self.build)(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                tracing::info!(what = self.what, cert = %self.files.cert.display(), "certificates reloaded");
            }
            Err(e) => {
                metrics::counter!("metrokv_tls_reload_failures_total").increment(1);
                tracing::error!(what = self.what, error = %e, "the changed certificate files do not load; keeping the ones in use");
            }
        }
    }
}

pub type ApiTls = Reloading<ServerConfig>;
pub type PeerTls = Reloading<PeerConfigs>;

/// The client API's TLS, from its files.
pub fn api_tls(files: TlsFiles) -> Result<Arc<ApiTls>, String> {
    Reloading::load(files, api_config, "client API TLS").map(Arc::new)
}

/// The peer transport's mutual TLS, from its files.
pub fn peer_tls(files: TlsFiles) -> Result<Arc<PeerTls>, String> {
    Reloading::load(files, peer_configs, "peer TLS").map(Arc::new)
}

/// Reload every configuration when its files change or on SIGHUP, until the node stops.
pub fn spawn_reloader(api: Option<Arc<ApiTls>>, peer: Option<Arc<PeerTls>>) {
    if api.is_none() && peer.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(RELOAD_POLL);
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            };
            let (api, peer) = (api.clone(), peer.clone());
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(a) = api {
                    a.reload(force);
                }
                if let Some(p) = peer {
                    p.reload(force);
                }
            })
            .await;
        }
    });
}

/// What `metrokv-node certs` writes: a CA and a certificate per member (for the client API and
/// the peer transport alike: DNS names `node-<id>` and `localhost`, IP 127.0.0.1), plus a
/// client certificate for `metrokv --cert`.
pub fn write_dev_certs(
    dir: &Path,
    ids: &[u64],
    ips: &[std::net::IpAddr],
) -> Result<Vec<PathBuf>, String> {
    use rcgen::BasicConstraints;
    use rcgen::CertificateParams;
    use rcgen::DnType;
    use rcgen::IsCa;
    use rcgen::KeyPair;
    let err = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = vec![];
    let mut write = |name: &str, text: String| -> Result<(), String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "metrokv local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    write("ca.pem", ca.pem())?;
    write("ca.key", ca_key.serialize_pem())?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, sans: Vec<String>| -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(sans).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        for ip in std::iter::once(&loopback).chain(ips) {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(*ip));
        }
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    for id in ids {
        let (cert, key) = leaf(
            &member_name(*id),
            vec![member_name(*id), "localhost".to_string()],
        )?;
        write(&format!("node-{id}.pem"), cert)?;
        write(&format!("node-{id}.key"), key)?;
    }
    let (cert, key) = leaf("metrokv client", vec!["client".to_string()])?;
    write("client.pem", cert)?;
    write("client.key", key)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_load_and_name_their_member() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_certs(dir.path(), &[1, 2], &[]).unwrap();
        let files = |n: &str| TlsFiles {
            cert: dir.path().join(format!("{n}.pem")),
            key: dir.path().join(format!("{n}.key")),
            ca: Some(dir.path().join("ca.pem")),
        };
        assert!(peer_tls(files("node-1")).is_ok());
        assert!(api_tls(files("node-2")).is_ok());
        let cert = certs(&dir.path().join("node-2.pem")).unwrap();
        assert_eq!(member_ids(&cert[0]), vec![2]);
        let client = certs(&dir.path().join("client.pem")).unwrap();
        assert!(member_ids(&client[0]).is_empty());
        // A key that does not belong to the certificate is refused.
        let mut mismatched = files("node-1");
        mismatched.key = dir.path().join("node-2.key");
        assert!(peer_tls(mismatched).is_err());
    }
}
