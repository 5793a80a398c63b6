//! The public client: [`ClientBuilder`] and the typed calls of docs/api.md on [`Client`].
//!
//! Each method validates its arguments, builds one [`Call`] (fixing the idempotency key of a
//! write before the first attempt), hands it to the transport, and reads the 2xx answer into a
//! typed result. Error answers are mapped in `error.rs`; retries happen in `transport.rs`.
//!
//! Left out: TLS and authentication (docs/api.md has neither), and streaming of large lists (callers
//! page with `after`).

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use metrokv_api as api;
use rand::rngs::StdRng;
use rand::Rng as _;
use rand::SeedableRng as _;
use reqwest::header::ETAG;
use reqwest::header::IF_MATCH;
use reqwest::header::IF_NONE_MATCH;
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::encoding;
use crate::endpoints::Endpoints;
use crate::error::Error;
use crate::error::Result;
use crate::error::Subject;
use crate::limits;
use crate::transport::Budget;
use crate::transport::Call;
use crate::transport::Kind;
use crate::transport::Reply;
use crate::transport::Transport;
use crate::txn::TxnRequest;
use crate::txn::TxnResponse;
use crate::types::*;

const JSON: &str = "application/json";
const OCTETS: &str = "application/octet-stream";

/// Configures a [`Client`]. Every setting has a default except the endpoints.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    endpoint_zones: Vec<(String, String)>,
    zone: Option<String>,
    learn_zones: bool,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    deadline: Duration,
    max_attempts: u32,
    seed: Option<u64>,
    token: Option<Secret>,
    tls: Option<TlsOptions>,
}

/// TLS to the nodes (etcdctl's `--cacert`, `--cert`, `--key`).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// The CA (PEM) that issued the nodes' certificates.
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for nodes that require one (`--client-ca`).
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl TlsOptions {
    fn config(&self) -> Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::PrivateKeyDer;
        let bad = |what: &std::path::Path, e: &dyn std::fmt::Display| Error::Config {
            message: format!("{}: {e}", what.display()),
        };
        let certs = |p: &std::path::Path| {
            CertificateDer::pem_file_iter(p)
                .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| bad(p, &e))
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca {
            for c in certs(ca)? {
                roots.add(c).map_err(|e| bad(ca, &e))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config {
                message: e.to_string(),
            })?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    certs(cert)?,
                    PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?,
                )
                .map_err(|e| bad(cert, &e))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::Config {
                    message: "a client certificate needs its key, and the key its certificate"
                        .into(),
                })
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A token, never shown by `Debug`.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<token>")
    }
}

impl ClientBuilder {
    /// Endpoints as URLs (`http://127.0.0.1:7001`) or `host:port`; list every node.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            endpoint_zones: Vec::new(),
            zone: None,
            learn_zones: true,
            attempt_timeout: limits::ATTEMPT_TIMEOUT_DEFAULT,
            connect_timeout: limits::CONNECT_TIMEOUT_DEFAULT,
            deadline: limits::DEADLINE_DEFAULT,
            max_attempts: limits::ATTEMPTS_MAX_DEFAULT,
            seed: None,
            token: None,
            tls: None,
        }
    }

    /// Trust `tls.ca` for `https://` endpoints and present `tls.cert` when given.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Send `Authorization: Bearer <token>` with every request (nodes started with
    /// `--auth-file` require one).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret(token.into()));
        self
    }

    /// The local three-node cluster of `scripts/cluster.sh`.
    pub fn local() -> Self {
        Self::new(limits::LOCAL_ENDPOINTS)
    }

    /// The caller's zone: nodes in it are preferred.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Declares an endpoint's zone up front (otherwise it is learned from `GET /v1/cluster`).
    pub fn endpoint_zone(mut self, endpoint: impl Into<String>, zone: impl Into<String>) -> Self {
        self.endpoint_zones.push((endpoint.into(), zone.into()));
        self
    }

    /// Whether to learn unknown zones from `GET /v1/cluster` before the first call (default:
    /// on, when a zone is set). Learning costs one short request per [`limits::ZONE_LEARN_INTERVAL`].
    pub fn learn_zones(mut self, learn: bool) -> Self {
        self.learn_zones = learn;
        self
    }

    /// The most one attempt may take (connect, send, read the answer).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The most establishing a connection may take (clamped to the attempt timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most a whole call may take, across retries. After it a write whose fate is unknown
    /// fails with [`Error::Indeterminate`], anything else with [`Error::Unavailable`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The most attempts per call. With `1` and one endpoint, each call is exactly one HTTP
    /// request to that node (what a test harness recording raw outcomes wants).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Seeds the RNG that picks the rotation among equal nodes and the backoff jitter, so a run
    /// can be reproduced. Idempotency keys and transfer ids never come from it (see
    /// [`TransferRequest::new`]).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The endpoints, as given.
    pub fn endpoint_list(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// The same settings over other endpoints (the benchmark rotates them per task).
    pub fn with_endpoints(mut self, endpoints: Vec<String>) -> Self {
        self.endpoints = endpoints;
        self
    }

    pub fn build(self) -> Result<Client> {
        let budget = self.budget()?;
        let mut rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let endpoints = Endpoints::new(
            &self.endpoints,
            &self.endpoint_zones,
            self.zone.clone(),
            self.learn_zones,
            rng.random::<u32>() as usize,
        )?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(Secret(token)) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::Config {
                    message: "the token holds characters a header cannot carry".into(),
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder();
        if let Some(tls) = &self.tls {
            http = http.use_preconfigured_tls(tls.config()?);
        }
        let http = http
            .default_headers(headers)
            .no_proxy()
            .tcp_nodelay(true)
            .tcp_keepalive(Some(limits::TCP_KEEPALIVE))
            .connect_timeout(self.connect_timeout.min(self.attempt_timeout))
            .pool_idle_timeout(limits::POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(limits::POOL_IDLE_PER_HOST_MAX)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("metrokv-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config {
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        let transport = Transport::new(http, Arc::new(endpoints), rng);
        Ok(Client {
            transport: Arc::new(transport),
            budget,
        })
    }

    fn budget(&self) -> Result<Budget> {
        let config = |message: String| Error::Config { message };
        if self.attempt_timeout.is_zero()
            || self.deadline.is_zero()
            || self.connect_timeout.is_zero()
        {
            return Err(config(
                "timeouts and the deadline must be positive".to_string(),
            ));
        }
        if !(1..=limits::ATTEMPTS_MAX_LIMIT).contains(&self.max_attempts) {
            return Err(config(format!(
                "max_attempts must be 1 to {}, not {}",
                limits::ATTEMPTS_MAX_LIMIT,
                self.max_attempts
            )));
        }
        Ok(Budget {
            attempt_timeout: self.attempt_timeout,
            deadline: self.deadline,
            max_attempts: self.max_attempts,
        })
    }
}

/// A metrokv client. Cheap to clone; clones share the connection pool and what was learned
/// about the nodes. See the crate docs for an example.
#[derive(Clone)]
pub struct Client {
    pub(crate) transport: Arc<Transport>,
    pub(crate) budget: Budget,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.transport.endpoints.zones())
            .field("budget", &self.budget)
            .finish()
    }
}

impl Client {
    /// A request outside the retry loop (a streamed backup), on the shared connection pool.
    pub(crate) fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.transport.http.request(method, url)
    }

    /// This client with another overall deadline per call.
    pub fn with_deadline(&self, deadline: Duration) -> Client {
        let mut client = self.clone();
        client.budget.deadline = deadline.max(Duration::from_millis(1));
        client
    }

    /// A client that sends each call exactly once, to `endpoint` only, sharing this client's
    /// connection pool: for harnesses that must know which node saw which request. Its writes
    /// still carry idempotency keys, and a write that times out is still `Indeterminate`.
    pub fn pinned_to(&self, endpoint: &str) -> Result<Client> {
        let endpoints = Endpoints::single(endpoint)?;
        let rng = StdRng::seed_from_u64(0);
        let transport = Transport::new(self.transport.http.clone(), Arc::new(endpoints), rng);
        let budget = Budget {
            max_attempts: 1,
            ..self.budget
        };
        Ok(Client {
            transport: Arc::new(transport),
            budget,
        })
    }

    /// The configured endpoints and their zones as known now.
    pub fn endpoints(&self) -> Vec<(String, Option<String>)> {
        self.transport.endpoints.zones()
    }

    /// Reads a key (linearizable). `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Reads a key with the given consistency.
    pub async fn get_with(&self, key: &str, consistency: Consistency) -> Result<Option<Versioned>> {
        let path = format!(
            "/v1/kv/{}{}",
            encoding::key_path_segment(key)?,
            encoding::query(&[("consistency", consistency.query_value())])
        );
        let call = Call::read(path, Subject::Key(key.to_string()));
        let reply = match self.send(&call).await {
            Err(Error::NotFound { .. }) => return Ok(None),
            other => other?,
        };
        let etag = reply.headers.get(ETAG).and_then(|v| v.to_str().ok());
        let version = etag
            .and_then(encoding::parse_etag)
            .ok_or_else(|| Error::Protocol {
                node: reply.served_by.endpoint.clone(),
                message: format!("GET {key:?} answered without a version (ETag {etag:?})"),
            })?;
        Ok(Some(Versioned {
            value: reply.body,
            version,
            served_by: reply.served_by,
        }))
    }

    /// Writes a key unconditionally.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<PutResult> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// Writes a key with conditions and/or a chosen idempotency key.
    pub async fn put_with(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> Result<PutResult> {
        let value = value.into();
        if value.len() > limits::VALUE_BYTES_MAX {
            return Err(Error::TooLarge {
                message: format!(
                    "the value has {} bytes, at most {} are allowed",
                    value.len(),
                    limits::VALUE_BYTES_MAX
                ),
            });
        }
        if options.create_only && options.if_version.is_some() {
            return Err(Error::InvalidRequest {
                message: "a put takes either an expected version or create-only, not both".into(),
            });
        }
        let mut call = self.write_call(
            Method::PUT,
            kv_path(key)?,
            key_subject(key),
            options.idempotency_key,
        )?;
        call.headers
            .extend(condition_headers(options.if_version, options.create_only));
        call.body = Some((value, OCTETS));
        let (answer, served_by) = self.send_json::<api::kv::PutAnswer>(&call).await?;
        Ok(PutResult {
            version: answer.version,
            revision: answer.revision,
            served_by,
        })
    }

    /// Deletes a key unconditionally.
    pub async fn delete(&self, key: &str) -> Result<DeleteResult> {
        self.delete_with(key, DeleteOptions::default()).await
    }

    /// Deletes a key with a condition and/or a chosen idempotency key.
    pub async fn delete_with(&self, key: &str, options: DeleteOptions) -> Result<DeleteResult> {
        let mut call = self.write_call(
            Method::DELETE,
            kv_path(key)?,
            key_subject(key),
            options.idempotency_key,
        )?;
        call.headers
            .extend(condition_headers(options.if_version, false));
        let (answer, served_by) = self.send_json::<api::kv::DeleteAnswer>(&call).await?;
        Ok(DeleteResult {
            deleted: answer.deleted,
            revision: answer.revision,
            served_by,
        })
    }

    /// Lists one page of keys, from one consistent snapshot.
    pub async fn list(&self, options: ListOptions) -> Result<ListPage> {
        let path = format!(
            "/v1/kv{}",
            page_query(
                &options.prefix,
                options.limit,
                options.after,
                options.consistency
            )
        );
        let call = Call::read(path, Subject::Other);
        let (page, served_by) = self.send_json::<api::kv::KvPage>(&call).await?;
        let items = page
            .items
            .into_iter()
            .map(KvItem::from_api)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| Error::Protocol {
                node: served_by.endpoint.clone(),
                message,
            })?;
        Ok(ListPage {
            revision: page.revision,
            items,
            more: page.more,
            served_by,
        })
    }

    /// Runs a transaction atomically. Every txn is sent as a write (with an idempotency key),
    /// since the server applies it through the log.
    pub async fn txn(&self, request: &TxnRequest) -> Result<TxnResponse> {
        for key in request.keys() {
            encoding::check_key(key)?;
        }
        let idempotency_key = request.idempotency_key.clone();
        let mut call = self.write_call(
            Method::POST,
            "/v1/txn".into(),
            Subject::Other,
            idempotency_key,
        )?;
        call.body = Some((json_bytes(&request.to_api()), JSON));
        let (answer, served_by) = self.send_json::<api::txn::TxnAnswer>(&call).await?;
        let node = served_by.endpoint.clone();
        TxnResponse::from_api(answer, served_by)
            .map_err(|message| Error::Protocol { node, message })
    }

    /// Creates an account with an opening balance.
    pub async fn create_account(&self, id: &str, balance: u64) -> Result<Account> {
        self.create_account_with(id, balance, None).await
    }

    /// Creates an account; `idempotency_key` settles an earlier `Indeterminate` create.
    pub async fn create_account_with(
        &self,
        id: &str,
        balance: u64,
        idempotency_key: Option<String>,
    ) -> Result<Account> {
        encoding::check_id("account id", id)?;
        let subject = Subject::Account(id.to_string());
        let mut call = self.write_call(
            Method::POST,
            "/v1/accounts".into(),
            subject,
            idempotency_key,
        )?;
        let body = api::ledger::CreateAccount {
            id: id.to_string(),
            balance,
        };
        call.body = Some((json_bytes(&body), JSON));
        let (account, served_by) = self.send_json::<api::ledger::Account>(&call).await?;
        Ok(Account::from_api(account, served_by))
    }

    /// Reads an account (linearizable). `None` when it does not exist.
    pub async fn get_account(&self, id: &str) -> Result<Option<Account>> {
        self.get_account_with(id, Consistency::Linearizable).await
    }

    pub async fn get_account_with(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<Account>> {
        let path = format!(
            "/v1/accounts/{}{}",
            encoding::id_path_segment("account id", id)?,
            encoding::query(&[("consistency", consistency.query_value())])
        );
        let call = Call::read(path, Subject::Account(id.to_string()));
        match self.send_json::<api::ledger::Account>(&call).await {
            Ok((account, served_by)) => Ok(Some(Account::from_api(account, served_by))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists one page of accounts with the total of all balances under the prefix.
    pub async fn list_accounts(&self, options: AccountListOptions) -> Result<AccountPage> {
        let path = format!(
            "/v1/accounts{}",
            page_query(
                &options.prefix,
                options.limit,
                options.after,
                options.consistency
            )
        );
        let call = Call::read(path, Subject::Other);
        let (page, served_by) = self.send_json::<api::ledger::AccountsPage>(&call).await?;
        Ok(AccountPage::from_api(page, served_by))
    }

    /// Moves money exactly once. Resending the same request (same id) returns the first outcome,
    /// including a first refusal; use that to settle an `Indeterminate` transfer.
    pub async fn transfer(&self, request: &TransferRequest) -> Result<TransferReceipt> {
        encoding::check_id("transfer id", &request.id)?;
        encoding::check_id("account id", &request.from)?;
        encoding::check_id("account id", &request.to)?;
        let call = Call {
            method: Method::POST,
            path: "/v1/transfers".into(),
            // No Idempotency-Key header: the server dedups transfers by id, and one key per
            // request keeps "same id, other body" a clean 422.
            body: Some((json_bytes(&transfer_body(request)), JSON)),
            headers: Vec::new(),
            kind: Kind::Transfer {
                id: request.id.clone(),
            },
            subject: Subject::Transfer {
                id: request.id.clone(),
                from: request.from.clone(),
                amount: request.amount,
            },
        };
        match self.send_json::<api::ledger::TransferRecord>(&call).await? {
            (api::ledger::TransferRecord::Committed(receipt), served_by) => {
                Ok(TransferReceipt::from_api(receipt, served_by))
            }
            (api::ledger::TransferRecord::Rejected(r), served_by) => Err(Error::Protocol {
                node: served_by.endpoint,
                message: format!("a transfer answered 200 with a refusal: {}", r.message),
            }),
        }
    }

    /// The recorded outcome of a transfer, read linearizably; `None` when no outcome is
    /// recorded. `None` does not prove the transfer will never apply (an earlier attempt may
    /// still be in flight): to settle an `Indeterminate` transfer, resend it with the same id.
    pub async fn get_transfer(&self, id: &str) -> Result<Option<TransferRecord>> {
        let path = format!(
            "/v1/transfers/{}",
            encoding::id_path_segment("transfer id", id)?
        );
        let call = Call::read(path, Subject::TransferRecord(id.to_string()));
        match self.send_json::<api::ledger::TransferRecord>(&call).await {
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
            Ok((record, served_by)) => Ok(Some(TransferRecord::from_api(record, served_by))),
        }
    }

    /// Changes cluster settings (`PUT /v1/cluster/settings`; fields left `None` stay as they
    /// are) and returns them as they are now. A replicated write: every node agrees.
    pub async fn set_settings(
        &self,
        settings: &api::cluster::Settings,
    ) -> Result<api::cluster::Settings> {
        let mut call = self.write_call(
            Method::PUT,
            "/v1/cluster/settings".into(),
            Subject::Other,
            None,
        )?;
        call.body = Some((json_bytes(settings), JSON));
        Ok(self.send_json::<api::cluster::Settings>(&call).await?.0)
    }

    /// Adds a node as a learner (`POST /v1/cluster/members`); start it with `--join` first.
    /// Any member takes the call (a follower forwards it to the leader).
    pub async fn add_member(
        &self,
        member: &api::cluster::AddMember,
    ) -> Result<api::cluster::Membership> {
        let mut call = self.membership_call(
            Method::POST,
            "/v1/cluster/members".into(),
            Subject::Member(member.id),
        )?;
        call.body = Some((json_bytes(member), JSON));
        Ok(self.send_json::<api::cluster::Membership>(&call).await?.0)
    }

    /// Makes a caught-up learner a voter (`POST /v1/cluster/members/{id}/promote`).
    pub async fn promote_member(&self, id: u64) -> Result<api::cluster::Membership> {
        let call = self.membership_call(
            Method::POST,
            format!("/v1/cluster/members/{id}/promote"),
            Subject::Member(id),
        )?;
        Ok(self.send_json::<api::cluster::Membership>(&call).await?.0)
    }

    /// Removes a member (`DELETE /v1/cluster/members/{id}`). The node refuses a removal that
    /// would leave the voters in one zone while zone safety is on, unless `force`; removing the
    /// leader hands leadership over first.
    pub async fn remove_member(&self, id: u64, force: bool) -> Result<api::cluster::Membership> {
        let path = if force {
            format!("/v1/cluster/members/{id}?force=true")
        } else {
            format!("/v1/cluster/members/{id}")
        };
        let call = self.membership_call(Method::DELETE, path, Subject::Member(id))?;
        Ok(self.send_json::<api::cluster::Membership>(&call).await?.0)
    }

    /// Hands leadership to voter `to`, or to the best caught-up voter
    /// (`POST /v1/cluster/transfer-leader`), and returns once it moved.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<api::cluster::Membership> {
        let subject = to.map_or(Subject::Other, Subject::Member);
        let mut call =
            self.membership_call(Method::POST, "/v1/cluster/transfer-leader".into(), subject)?;
        call.body = Some((json_bytes(&api::cluster::TransferLeader { to }), JSON));
        Ok(self.send_json::<api::cluster::Membership>(&call).await?.0)
    }

    /// A membership call is sent like a write: the node refuses a repeated change (the member
    /// is already there, or gone), so a retry cannot make it twice.
    fn membership_call(&self, method: Method, path: String, subject: Subject) -> Result<Call> {
        self.write_call(method, path, subject, None)
    }

    /// The cluster settings (`GET /v1/cluster/settings`, linearizable).
    pub async fn settings(&self) -> Result<api::cluster::Settings> {
        let call = Call::read("/v1/cluster/settings".into(), Subject::Other);
        Ok(self.send_json::<api::cluster::Settings>(&call).await?.0)
    }

    /// The cluster as one node sees it. Also teaches the client the nodes' zones.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let call = Call::read("/v1/cluster".into(), Subject::Other);
        let (view, served_by) = self.send_json::<api::cluster::ClusterView>(&call).await?;
        let status = ClusterStatus::from_api(view, served_by);
        self.transport.endpoints.learn_zones(
            status
                .members
                .iter()
                .map(|m| (m.client_addr.as_str(), m.zone.as_str())),
        );
        Ok(status)
    }

    /// Asks `GET /v1/cluster` for zones once, if they are needed and unknown. Failure is not an
    /// error: the client then simply treats those nodes' zones as unknown.
    async fn learn_zones_if_needed(&self) {
        if !self.transport.endpoints.claim_zone_learning(Instant::now()) {
            return;
        }
        let attempt_timeout = limits::ZONE_LEARN_TIMEOUT.min(self.budget.attempt_timeout);
        let budget = Budget {
            attempt_timeout,
            deadline: attempt_timeout,
            max_attempts: 1,
        };
        let call = Call::read("/v1/cluster".into(), Subject::Other);
        let status = match self.transport.execute(&call, budget).await {
            Ok(reply) => serde_json::from_slice::<api::cluster::ClusterView>(&reply.body)
                .ok()
                .map(|view| ClusterStatus::from_api(view, reply.served_by)),
            Err(e) => {
                tracing::debug!(error = %e, "could not learn zones");
                None
            }
        };
        if let Some(status) = status {
            self.transport.endpoints.learn_zones(
                status
                    .members
                    .iter()
                    .map(|m| (m.client_addr.as_str(), m.zone.as_str())),
            );
        }
    }

    async fn send(&self, call: &Call) -> Result<Reply> {
        self.learn_zones_if_needed().await;
        self.transport.execute(call, self.budget).await
    }

    async fn send_json<T: DeserializeOwned>(&self, call: &Call) -> Result<(T, ServedBy)> {
        let reply = self.send(call).await?;
        let value = serde_json::from_slice(&reply.body).map_err(|e| Error::Protocol {
            node: reply.served_by.endpoint.clone(),
            message: format!(
                "{} answered {} with a body that is not the expected JSON: {e}",
                call.operation(),
                reply.status
            ),
        })?;
        Ok((value, reply.served_by))
    }

    /// A write call with its idempotency key fixed (the caller's, or a fresh random one).
    fn write_call(
        &self,
        method: Method,
        path: String,
        subject: Subject,
        idempotency_key: Option<String>,
    ) -> Result<Call> {
        let idempotency_key = match idempotency_key {
            Some(given) => {
                encoding::check_idempotency_key(&given)?;
                given
            }
            // From the OS RNG, never the seed: a repeated key would be deduplicated against an
            // earlier run's write for 24 hours.
            None => uuid::Uuid::new_v4().to_string(),
        };
        Ok(Call {
            method,
            path,
            body: None,
            headers: Vec::new(),
            kind: Kind::Write { idempotency_key },
            subject,
        })
    }
}

fn key_subject(key: &str) -> Subject {
    Subject::Key(key.to_string())
}

fn kv_path(key: &str) -> Result<String> {
    Ok(format!("/v1/kv/{}", encoding::key_path_segment(key)?))
}

fn condition_headers(
    if_version: Option<u64>,
    create_only: bool,
) -> Vec<(reqwest::header::HeaderName, String)> {
    let mut headers = Vec::new();
    if let Some(version) = if_version {
        headers.push((IF_MATCH, format!("\"{version}\"")));
    }
    if create_only {
        headers.push((IF_NONE_MATCH, "*".to_string()));
    }
    headers
}

fn page_query(
    prefix: &str,
    limit: Option<u32>,
    after: Option<String>,
    consistency: Consistency,
) -> String {
    encoding::query(&[
        ("prefix", Some(prefix.to_string()).filter(|p| !p.is_empty())),
        ("limit", limit.map(|l| l.to_string())),
        ("after", after),
        ("consistency", consistency.query_value()),
    ])
}

fn transfer_body(request: &TransferRequest) -> api::ledger::TransferRequest {
    api::ledger::TransferRequest {
        id: request.id.clone(),
        from: request.from.clone(),
        to: request.to.clone(),
        amount: request.amount,
    }
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("an API body always encodes"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;
    use std::time::Instant;

    use super::*;
    use crate::testing::refusing_endpoint;
    use crate::testing::Responder;
    use crate::testing::Step;
    use crate::txn::Compare;
    use crate::txn::Op;

    const ATTEMPT: Duration = Duration::from_millis(500);
    const DEADLINE: Duration = Duration::from_millis(1500);
    /// Slack for scheduling on a loaded machine when checking that a call kept its deadline.
    const DEADLINE_SLACK: Duration = Duration::from_millis(1500);

    const PUT_OK: &str = r#"{"version":5,"revision":9}"#;

    /// A client that tries `endpoints` in the given order: the first is in our zone, the rest in
    /// another, so the order does not depend on the seeded rotation.
    fn client(endpoints: &[&str]) -> Client {
        let mut builder = ClientBuilder::new(endpoints.iter().copied())
            .zone("dc-a")
            .learn_zones(false)
            .attempt_timeout(ATTEMPT)
            .deadline(DEADLINE)
            .seed(7);
        for (i, endpoint) in endpoints.iter().enumerate() {
            builder = builder.endpoint_zone(*endpoint, if i == 0 { "dc-a" } else { "dc-b" });
        }
        builder.build().expect("valid config")
    }

    fn keys_of(responder: &Responder) -> Vec<String> {
        responder
            .requests()
            .iter()
            .map(|r| r.header("idempotency-key").unwrap_or("<none>").to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_503_is_retried_with_the_same_key_until_it_succeeds() {
        let node = Responder::scripted(vec![
            Step::error(503, "unavailable"),
            Step::json(200, PUT_OK),
        ])
        .await;
        let result = client(&[&node.url])
            .put("k", "v")
            .await
            .expect("put succeeds");
        assert_eq!((result.version, result.revision), (5, 9));
        let keys = keys_of(&node);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], keys[1], "one key for all attempts of one write");
        assert_ne!(keys[0], "<none>");
        let first = &node.requests()[0];
        assert_eq!(
            (first.method.as_str(), first.path.as_str()),
            ("PUT", "/v1/kv/k")
        );
        assert_eq!(first.body, b"v");
    }

    #[tokio::test]
    async fn a_503_moves_the_call_to_the_next_node() {
        let a = Responder::scripted(vec![Step::error(503, "unavailable")]).await;
        let b = Responder::scripted(vec![
            Step::json(200, PUT_OK).with_header("x-metrokv-leader", "n2")
        ])
        .await;
        let result = client(&[&a.url, &b.url])
            .put("k", "v")
            .await
            .expect("put succeeds");
        assert_eq!(result.served_by.endpoint, b.url);
        assert_eq!(result.served_by.leader.as_deref(), Some("n2"));
        assert_eq!(a.requests().len(), 1);
        assert_eq!(keys_of(&a), keys_of(&b));
    }

    #[tokio::test]
    async fn a_504_is_retried_with_the_same_key() {
        let node = Responder::scripted(vec![
            Step::error(504, "indeterminate"),
            Step::json(200, PUT_OK),
        ])
        .await;
        client(&[&node.url])
            .put("k", "v")
            .await
            .expect("settled by the retry");
        let keys = keys_of(&node);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], keys[1]);
    }

    #[tokio::test]
    async fn a_timed_out_write_is_settled_by_a_retry_with_the_same_key() {
        let node = Responder::scripted(vec![Step::Hang, Step::json(200, PUT_OK)]).await;
        client(&[&node.url])
            .put("k", "v")
            .await
            .expect("settled by the retry");
        let keys = keys_of(&node);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], keys[1]);
    }

    #[tokio::test]
    async fn a_lost_connection_is_retried_on_the_same_node_first() {
        let a = Responder::scripted(vec![Step::Close, Step::json(200, PUT_OK)]).await;
        let b = Responder::scripted(vec![Step::json(200, PUT_OK)]).await;
        let result = client(&[&a.url, &b.url])
            .put("k", "v")
            .await
            .expect("put succeeds");
        assert_eq!(result.served_by.endpoint, a.url);
        assert_eq!(a.requests().len(), 2);
        assert!(b.requests().is_empty());
    }

    #[tokio::test]
    async fn a_write_whose_fate_stays_unknown_is_indeterminate_at_the_deadline() {
        let node = Responder::scripted(vec![Step::Hang]).await;
        let started = Instant::now();
        let error = client(&[&node.url])
            .put("k", "v")
            .await
            .expect_err("never answered");
        assert!(
            started.elapsed() < DEADLINE + DEADLINE_SLACK,
            "took {:?}",
            started.elapsed()
        );
        let sent_key = keys_of(&node)[0].clone();
        match &error {
            Error::Indeterminate {
                idempotency_key,
                last_node,
                attempts,
                ..
            } => {
                assert_eq!(idempotency_key.as_deref(), Some(sent_key.as_str()));
                assert_eq!(last_node, &node.url);
                assert!(
                    *attempts >= 2,
                    "retried within the deadline, made {attempts}"
                );
            }
            other => panic!("expected Indeterminate, got {other:?}"),
        }
        assert!(error.to_string().contains(&sent_key), "{error}");
        assert!(!error.is_definite_failure());
        assert_eq!(error.exit_code(), 3);
    }

    #[tokio::test]
    async fn one_maybe_applied_attempt_makes_the_end_indeterminate() {
        // The first attempt may have applied; later 503s cannot undo that.
        let node = Responder::scripted(vec![
            Step::error(504, "indeterminate"),
            Step::error(503, "unavailable"),
        ])
        .await;
        let error = client(&[&node.url])
            .put("k", "v")
            .await
            .expect_err("never settled");
        assert!(matches!(error, Error::Indeterminate { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_write_that_never_reached_a_node_is_unavailable_at_the_deadline() {
        let a = refusing_endpoint().await;
        let b = Responder::scripted(vec![
            Step::error(503, "unavailable").with_header("retry-after", "1")
        ])
        .await;
        let error = client(&[&a, &b.url])
            .put("k", "v")
            .await
            .expect_err("nobody serves");
        match &error {
            Error::Unavailable { tried, .. } => {
                let nodes: Vec<&str> = tried.iter().map(|t| t.node.as_str()).collect();
                assert_eq!(nodes, vec![a.as_str(), b.url.as_str()]);
                assert!(tried[0].error.contains("connect"), "{}", tried[0].error);
                assert!(tried[1].error.contains("503"), "{}", tried[1].error);
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(error.is_definite_failure());
        assert_eq!(error.exit_code(), 3);
    }

    #[tokio::test]
    async fn reads_retry_after_timeouts_and_are_never_indeterminate() {
        let node = Responder::scripted(vec![Step::Hang]).await;
        let error = client(&[&node.url])
            .get("k")
            .await
            .expect_err("never answered");
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        assert!(node.requests().len() >= 2);
    }

    #[tokio::test]
    async fn refusals_are_answered_at_once_without_retrying() {
        let node = Responder::scripted(vec![Step::json(
            412,
            r#"{"error":"precondition_failed","message":"m","current_version":7}"#,
        )])
        .await;
        let options = PutOptions {
            if_version: Some(3),
            ..PutOptions::default()
        };
        let error = client(&[&node.url])
            .put_with("k", "v", options)
            .await
            .expect_err("refused");
        assert_eq!(
            error,
            Error::PreconditionFailed {
                key: "k".into(),
                current_version: Some(7)
            }
        );
        let requests = node.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].header("if-match"), Some("\"3\""));
    }

    #[tokio::test]
    async fn a_pinned_client_makes_exactly_one_attempt() {
        let node = Responder::scripted(vec![Step::Hang]).await;
        let pinned = client(&[&node.url])
            .pinned_to(&node.url)
            .expect("valid endpoint");
        let error = pinned.put("k", "v").await.expect_err("timed out");
        assert!(
            matches!(error, Error::Indeterminate { attempts: 1, .. }),
            "{error:?}"
        );
        assert_eq!(node.requests().len(), 1);
    }

    #[tokio::test]
    async fn transfers_are_keyed_by_their_id() {
        let node = Responder::scripted(vec![Step::error(504, "indeterminate")]).await;
        let request = TransferRequest::new("alice", "bob", 5).with_id("t-42");
        let error = client(&[&node.url])
            .transfer(&request)
            .await
            .expect_err("never settled");
        match &error {
            Error::Indeterminate {
                transfer_id,
                idempotency_key,
                ..
            } => {
                assert_eq!(transfer_id.as_deref(), Some("t-42"));
                assert_eq!(idempotency_key, &None);
            }
            other => panic!("expected Indeterminate, got {other:?}"),
        }
        assert!(error.to_string().contains("/v1/transfers/t-42"), "{error}");
        let requests = node.requests();
        assert!(requests.len() >= 2);
        assert!(requests
            .iter()
            .all(|r| r.header("idempotency-key").is_none()));
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"id": "t-42", "from": "alice", "to": "bob", "amount": 5})
        );
    }

    #[tokio::test]
    async fn refused_transfers_name_the_account() {
        let node = Responder::scripted(vec![Step::json(
            409,
            r#"{"error":"insufficient_funds","message":"m","balance":2}"#,
        )])
        .await;
        let request = TransferRequest::new("alice", "bob", 5).with_id("t-1");
        let error = client(&[&node.url])
            .transfer(&request)
            .await
            .expect_err("refused");
        assert_eq!(
            error,
            Error::InsufficientFunds {
                account: "alice".into(),
                balance: Some(2),
                amount: 5,
                transfer_id: Some("t-1".into()),
            }
        );
        assert_eq!(error.exit_code(), 1);
    }

    #[tokio::test]
    async fn gets_read_value_version_and_encode_the_key() {
        let node = Responder::scripted(vec![
            Step::Respond {
                status: 200,
                headers: vec![],
                body: vec![0xff, 0x00],
            }
            .with_header("etag", "\"4\"")
            .with_header("x-metrokv-applied-index", "11"),
            Step::error(404, "not_found"),
        ])
        .await;
        let client = client(&[&node.url]);
        let read = client
            .get_with("a/b c", Consistency::Stale)
            .await
            .expect("ok")
            .expect("found");
        assert_eq!((read.value.as_ref(), read.version), (&[0xff, 0x00][..], 4));
        assert_eq!(read.served_by.applied_index, Some(11));
        assert_eq!(client.get("missing").await, Ok(None));
        let paths: Vec<String> = node.requests().iter().map(|r| r.path.clone()).collect();
        assert_eq!(
            paths,
            vec!["/v1/kv/a%2Fb%20c?consistency=stale", "/v1/kv/missing"]
        );
    }

    #[tokio::test]
    async fn lists_txns_and_accounts_speak_the_api_shapes() {
        let node = Responder::with(|request, _| match request.path.as_str() {
            "/v1/kv?prefix=user%2F&limit=2" => Step::json(
                200,
                r#"{"revision":3,"items":[{"key":"user/1","value":"x","version":2},
                    {"key":"user/2","value_base64":"/w==","version":3}],"more":true}"#,
            ),
            "/v1/txn" => Step::json(
                200,
                r#"{"succeeded":false,"revision":3,"results":[{"get":null}]}"#,
            ),
            "/v1/accounts" => Step::json(201, r#"{"id":"a","balance":10,"version":4}"#),
            "/v1/accounts/a" => Step::json(200, r#"{"id":"a","balance":10,"version":4}"#),
            "/v1/transfers/t" => Step::json(
                200,
                r#"{"id":"t","status":"rejected","error":"account_not_found","message":"m"}"#,
            ),
            _ => Step::error(404, "not_found"),
        })
        .await;
        let client = client(&[&node.url]);
        let options = ListOptions {
            prefix: "user/".into(),
            limit: Some(2),
            ..ListOptions::default()
        };
        let page = client.list(options).await.expect("listed");
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.items[1].value.as_ref(), &[0xff]);
        assert_eq!(page.next_after(), Some("user/2"));

        let txn = TxnRequest::new()
            .when(Compare::exists("x"))
            .otherwise(Op::get("x"));
        let response = client.txn(&txn).await.expect("txn answered");
        assert!(!response.succeeded);
        assert_eq!(response.results, vec![crate::txn::OpResult::Get(None)]);

        let account = client.create_account("a", 10).await.expect("created");
        assert_eq!((account.balance, account.version), (10, Some(4)));
        assert_eq!(
            client
                .get_account("a")
                .await
                .expect("read")
                .map(|a| a.balance),
            Some(10)
        );
        assert_eq!(client.get_account("b").await, Ok(None));
        let record = client
            .get_transfer("t")
            .await
            .expect("read")
            .expect("found");
        assert!(matches!(record.outcome, TransferOutcome::Rejected { .. }));
        assert_eq!(client.get_transfer("u").await, Ok(None));

        let requests = node.requests();
        let txn_body: serde_json::Value = serde_json::from_slice(&requests[1].body).expect("json");
        assert_eq!(txn_body, txn.to_json());
        assert!(requests[1].header("idempotency-key").is_some());
        assert!(
            requests[2].header("idempotency-key").is_some(),
            "account creation is a write"
        );
    }

    #[tokio::test]
    async fn zones_are_learned_before_the_first_call() {
        let cluster = |a: &str, b: &str| {
            format!(
                r#"{{"cluster_id":"c","node":1,"leader":1,"term":2,"commit_index":5,"members":[
                    {{"id":1,"zone":"dc-a","client_addr":"{a}","peer_addr":"","role":"leader","term":2,"applied_index":5,"reachable":true}},
                    {{"id":2,"zone":"dc-b","client_addr":"{b}","peer_addr":"","role":"follower","term":2,"applied_index":5,"reachable":true}}]}}"#
            )
        };
        let addresses = Arc::new(std::sync::OnceLock::<(String, String)>::new());
        let script = |addresses: Arc<std::sync::OnceLock<(String, String)>>| {
            move |request: &crate::testing::Recorded, _| match request.path.as_str() {
                "/v1/cluster" => {
                    let (a, b) = addresses.get().cloned().unwrap_or_default();
                    Step::json(200, &cluster(&a, &b))
                }
                _ => Step::json(200, PUT_OK),
            }
        };
        let a = Responder::with(script(addresses.clone())).await;
        let b = Responder::with(script(addresses.clone())).await;
        let authority = |url: &str| url.trim_start_matches("http://").to_string();
        addresses
            .set((authority(&a.url), authority(&b.url)))
            .expect("set once");
        for seed in 0..4 {
            let client = ClientBuilder::new([a.url.clone(), b.url.clone()])
                .zone("dc-b")
                .seed(seed)
                .build()
                .expect("valid config");
            let result = client.put("k", "v").await.expect("put succeeds");
            assert_eq!(result.served_by.endpoint, b.url, "seed {seed}");
            let zones = client.endpoints();
            assert_eq!(zones[0].1.as_deref(), Some("dc-a"));
            assert_eq!(zones[1].1.as_deref(), Some("dc-b"));
        }
    }

    #[tokio::test]
    async fn bad_arguments_fail_before_sending() {
        let node = Responder::scripted(vec![Step::json(200, PUT_OK)]).await;
        let client = client(&[&node.url]);
        let big = vec![0u8; limits::VALUE_BYTES_MAX + 1];
        assert!(matches!(
            client.put("k", big).await,
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            client.put("", "v").await,
            Err(Error::InvalidRequest { .. })
        ));
        let both = PutOptions {
            if_version: Some(1),
            create_only: true,
            ..PutOptions::default()
        };
        assert!(matches!(
            client.put_with("k", "v", both).await,
            Err(Error::InvalidRequest { .. })
        ));
        let long_key = PutOptions {
            idempotency_key: Some("x".repeat(200)),
            ..PutOptions::default()
        };
        assert!(matches!(
            client.put_with("k", "v", long_key).await,
            Err(Error::InvalidRequest { .. })
        ));
        assert!(node.requests().is_empty());
    }

    #[test]
    fn clients_and_their_futures_can_cross_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
        fn sendable<F: std::future::Future + Send>(_: F) {}
        let client = ClientBuilder::local().build().expect("valid config");
        shareable(&client);
        // Not polled: this only checks at compile time that callers can tokio::spawn calls.
        sendable(client.put("k", "v"));
        sendable(client.transfer(&TransferRequest::new("a", "b", 1)));
        sendable(client.cluster_status());
    }

    #[test]
    fn builder_rejects_bad_configuration() {
        assert!(matches!(
            ClientBuilder::new(Vec::<String>::new()).build(),
            Err(Error::Config { .. })
        ));
        assert!(ClientBuilder::local().max_attempts(0).build().is_err());
        assert!(ClientBuilder::local()
            .deadline(Duration::ZERO)
            .build()
            .is_err());
        assert!(ClientBuilder::local()
            .endpoint_zone("http://elsewhere:1", "dc-a")
            .build()
            .is_err());
        assert!(ClientBuilder::local().zone("dc-a").build().is_ok());
    }
}
