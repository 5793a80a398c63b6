//! Bearer tokens with roles and scopes, from a file (`--auth-file`), reloaded when it changes.
//!
//! ```toml
//! [[token]]
//! name = "payments"                    # for logs and metrics; never the token itself
//! hash = "sha256:<64 hex digits>"      # `metrokv-node token` prints a token and its hash
//! role = "write"                       # read | write | admin
//! key_prefixes = ["payments/"]         # optional: only keys starting with one of these
//! account_prefixes = ["pay-"]          # optional: only accounts starting with one of these
//! ```
//! - `read`: GET of keys, accounts, transfer records and `/v1/cluster`, and txns that write
//!   nothing. `write`: that, and puts, deletes, txns, accounts and transfers. `admin`:
//!   everything, including settings, membership, leader transfer and `/v1/backup`.
//! - A scoped token (with prefixes) touches only keys, or accounts, inside its prefixes; a
//!   transfer needs both accounts inside; it may not use admin calls (a backup holds every
//!   key). A token with only `account_prefixes` touches no key, and one with only
//!   `key_prefixes` no account; a token with neither list is unscoped.
//! - Tokens are random (`metrokv-node token` makes 32 bytes), so a plain SHA-256 is enough to
//!   keep the file from holding usable secrets; a slow password hash would cost every request.
//!   Lookup is by the hash of what was presented, so timing says nothing about stored tokens.
//!
//! With no auth file every request is allowed, as before (the local cluster's default).

use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::Digest;

use super::ApiError;

/// How often the auth file is checked for changes.
pub const AUTH_FILE_POLL: Duration = Duration::from_secs(1);

/// The prefix of tokens `metrokv-node token` makes (so a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "mkv_";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// Who made a request: the token's name, role and scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// `None`: unscoped. `Some`: only these prefixes (of keys, of account ids).
    pub scope: Option<Scope>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub key_prefixes: Vec<String>,
    pub account_prefixes: Vec<String>,
}

fn within(prefixes: &[String], name: &str) -> bool {
    prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

impl Principal {
    fn forbidden(&self, what: String) -> ApiError {
        metrics::counter!("metrokv_auth_failures_total", "reason" => "forbidden").increment(1);
        tracing::info!(token = %self.name, %what, "request refused: outside the token's role or scope");
        ApiError::Forbidden(format!("token {:?} may not {what}", self.name))
    }

    /// The request needs `role` (or a higher one).
    pub fn need(&self, role: Role, what: &str) -> Result<(), ApiError> {
        if self.role < role {
            return Err(self.forbidden(format!(
                "{what}: that needs the {} role, the token has {}",
                role.as_str(),
                self.role.as_str()
            )));
        }
        if role == Role::Admin && self.scope.is_some() {
            return Err(self.forbidden(format!("{what}: a scoped token makes no admin calls")));
        }
        Ok(())
    }

    pub fn key(&self, key: &str) -> Result<(), ApiError> {
        match &self.scope {
            Some(s) if !within(&s.key_prefixes, key) => {
                Err(self.forbidden(format!("touch key {key:?} (outside its key prefixes)")))
            }
            _ => Ok(()),
        }
    }

    /// A listing by `prefix`: the prefix itself must lie inside the scope.
    pub fn key_listing(&self, prefix: &str) -> Result<(), ApiError> {
        match &self.scope {
            Some(s) if !within(&s.key_prefixes, prefix) => Err(self.forbidden(format!(
                "list keys by prefix {prefix:?} (pass a prefix inside its key prefixes)"
            ))),
            _ => Ok(()),
        }
    }

    pub fn account(&self, id: &str) -> Result<(), ApiError> {
        match &self.scope {
            Some(s) if !within(&s.account_prefixes, id) => Err(self.forbidden(format!(
                "touch account {id:?} (outside its account prefixes)"
            ))),
            _ => Ok(()),
        }
    }

    pub fn account_listing(&self, prefix: &str) -> Result<(), ApiError> {
        match &self.scope {
            Some(s) if !within(&s.account_prefixes, prefix) => Err(self.forbidden(format!(
                "list accounts by prefix {prefix:?} (pass a prefix inside its account prefixes)"
            ))),
            _ => Ok(()),
        }
    }
}

/// The caller of a request, as the auth middleware found it: `None` when auth is off.
#[derive(Clone, Debug, Default)]
pub struct Caller(pub Option<Arc<Principal>>);

impl Caller {
    pub fn need(&self, role: Role, what: &str) -> Result<(), ApiError> {
        self.0.as_ref().map_or(Ok(()), |p| p.need(role, what))
    }
    pub fn key(&self, key: &str) -> Result<(), ApiError> {
        self.0.as_ref().map_or(Ok(()), |p| p.key(key))
    }
    pub fn key_listing(&self, prefix: &str) -> Result<(), ApiError> {
        self.0.as_ref().map_or(Ok(()), |p| p.key_listing(prefix))
    }
    pub fn account(&self, id: &str) -> Result<(), ApiError> {
        self.0.as_ref().map_or(Ok(()), |p| p.account(id))
    }
    pub fn account_listing(&self, prefix: &str) -> Result<(), ApiError> {
        self.0
            .as_ref()
            .map_or(Ok(()), |p| p.account_listing(prefix))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_default())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    hash: String,
    role: Role,
    key_prefixes: Option<Vec<String>>,
    account_prefixes: Option<Vec<String>>,
}

/// The SHA-256 of a token, as the auth file holds it: `sha256:<hex>`.
pub fn hash_token(token: &str) -> String {
    let digest = sha2::Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A new random token and its hash.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let hash = hash_token(&token);
    (token, hash)
}

type Tokens = HashMap<String, Arc<Principal>>;

/// Parse an auth file's text: every token by its hash.
fn parse(text: &str) -> Result<Tokens, String> {
    let file: AuthFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut tokens = HashMap::new();
    for t in file.token {
        let hex = t
            .hash
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                format!(
                    "token {:?}: hash must be sha256: and 64 hex digits (see `metrokv-node token`)",
                    t.name
                )
            })?;
        let scope = match (t.key_prefixes, t.account_prefixes) {
            (None, None) => None,
            (k, a) => Some(Scope {
                key_prefixes: k.unwrap_or_default(),
                account_prefixes: a.unwrap_or_default(),
            }),
        };
        if t.role == Role::Admin && scope.is_some() {
            return Err(format!(
                "token {:?}: an admin token cannot be scoped (a backup holds every key)",
                t.name
            ));
        }
        let principal = Principal {
            name: t.name.clone(),
            role: t.role,
            scope,
        };
        let hash = format!("sha256:{}", hex.to_ascii_lowercase());
        if tokens.insert(hash, Arc::new(principal)).is_some() {
            return Err(format!("token {:?}: the same hash is listed twice", t.name));
        }
    }
    Ok(tokens)
}

/// The tokens of an auth file, kept current.
pub struct Auth {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
    modified: RwLock<Option<SystemTime>>,
    /// Paths served without a token besides `/health` (`--auth-open`).
    open: Vec<String>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Auth {
    /// Load `path`; an unreadable or invalid file is an error (the node does not start).
    pub fn load(path: &Path, open: Vec<String>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the auth file {}: {e}", path.display()))?;
        let tokens = parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), tokens = tokens.len(), "auth is on");
        Ok(Self {
            path: path.to_path_buf(),
            tokens: RwLock::new(Arc::new(tokens)),
            modified: RwLock::new(modified(path)),
            open,
        })
    }

    /// Read the file again if it changed. A file that no longer parses leaves the tokens as
    /// they were (logged and counted): a typo must not lock everyone out, or let everyone in.
    pub fn reload_if_changed(&self) {
        let now = modified(&self.path);
        if now == *self.modified.read().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        *self.modified.write().unwrap_or_else(|e| e.into_inner()) = now;
        match std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|t| parse(&t))
        {
            Ok(tokens) => {
                tracing::info!(path = %self.path.display(), tokens = tokens.len(), "auth file reloaded");
                *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
            }
            Err(e) => {
                metrics::counter!("metrokv_auth_reload_failures_total").increment(1);
                tracing::error!(path = %self.path.display(), error = %e, "the changed auth file is invalid; keeping the tokens loaded before");
            }
        }
    }

    /// Whether `path` is served without a token.
    pub fn is_open(&self, path: &str) -> bool {
        path == "/health" || self.open.iter().any(|p| p == path)
    }

    /// The principal of an `Authorization: Bearer <token>` header, or 401.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Arc<Principal>, ApiError> {
        let fail = |reason: &'static str, message: &str| {
            metrics::counter!("metrokv_auth_failures_total", "reason" => reason).increment(1);
            tracing::info!(reason, "request refused: not authenticated");
            ApiError::Unauthenticated(message.to_string())
        };
        let Some(header) = header else {
            return Err(fail(
                "missing",
                "this node requires a token: send Authorization: Bearer <token>",
            ));
        };
        let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return Err(fail(
                "malformed",
                "the Authorization header must be Bearer <token>",
            ));
        };
        let tokens = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokens
            .get(&hash_token(token.trim()))
            .cloned()
            .ok_or_else(|| fail("unknown", "the token is not known to this node"))
    }
}

/// Poll the auth file for changes until the node stops.
pub fn spawn_reloader(auth: Arc<Auth>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(AUTH_FILE_POLL);
        loop {
            tick.tick().await;
            let auth = auth.clone();
            let _ = tokio::task::spawn_blocking(move || auth.reload_if_changed()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tokens: &[(&str, &str, &str)]) -> String {
        tokens
            .iter()
            .map(|(name, token, rest)| {
                format!(
                    "[[token]]\nname = \"{name}\"\nhash = \"{}\"\n{rest}\n",
                    hash_token(token)
                )
            })
            .collect()
    }

    #[test]
    fn tokens_parse_with_roles_and_scopes() {
        let tokens = parse(&file(&[
            ("r", "tr", "role = \"read\""),
            (
                "s",
                "ts",
                "role = \"write\"\nkey_prefixes = [\"a/\"]\naccount_prefixes = [\"x-\"]",
            ),
        ]))
        .unwrap();
        let s = &tokens[&hash_token("ts")];
        assert_eq!(s.role, Role::Write);
        assert!(s.key("a/1").is_ok() && s.key("b/1").is_err());
        assert!(s.account("x-1").is_ok() && s.account("y-1").is_err());
        assert!(s.key_listing("a/").is_ok() && s.key_listing("").is_err());
        assert!(s.need(Role::Admin, "back up").is_err());
        let r = &tokens[&hash_token("tr")];
        assert!(r.need(Role::Read, "read").is_ok());
        assert!(r.need(Role::Write, "write").is_err());
        assert!(r.key("anything").is_ok());
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(parse("[[token]]\nname = \"a\"\nhash = \"md5:00\"\nrole = \"read\"").is_err());
        assert!(parse(&file(&[("a", "t", "role = \"root\"")])).is_err());
        assert!(parse(&file(&[("a", "t", "role = \"read\"\nextra = 1")])).is_err());
        assert!(parse(&file(&[(
            "a",
            "t",
            "role = \"admin\"\nkey_prefixes = [\"k\"]"
        )]))
        .is_err());
        assert!(parse(&file(&[
            ("a", "t", "role = \"read\""),
            ("b", "t", "role = \"write\"")
        ]))
        .is_err());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn new_tokens_are_random_and_match_their_hash() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), ha);
    }
}
