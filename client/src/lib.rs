//! `metrokv-client`: an async client for the metrokv HTTP API (`shared/API.md`) that survives
//! failover safely.
//!
//! - **Any node, nearest first.** The client knows every endpoint and prefers nodes in its own
//!   zone (declared, or learned from `GET /v1/cluster`). Every node accepts every request, so it
//!   never chases the leader; it moves to the next node when one refuses connections, times out
//!   or answers 503, and keeps connections alive in between.
//! - **Writes apply exactly once.** Every write carries an idempotency key, generated when the
//!   caller gives none and reused on every retry (transfers use their id), so a retry after a
//!   timeout or a 504 cannot apply twice.
//! - **A final answer within the deadline.** When the deadline passes while a write's fate is
//!   unknown, the call fails with [`Error::Indeterminate`], which names the key to resend it
//!   with; if nothing can have applied, it fails with [`Error::Unavailable`].
//! - **Typed errors**, one variant per API.md error code; see [`Error`].
//!
//! The rules for retrying are pure functions in [`retry`].
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use metrokv_client::ClientBuilder;
//! use metrokv_client::Error;
//! use metrokv_client::PutOptions;
//! use metrokv_client::TransferRequest;
//!
//! # async fn example() -> Result<(), Error> {
//! let client = ClientBuilder::new(["http://127.0.0.1:7001", "http://127.0.0.1:7002"])
//!     .zone("dc-a")
//!     .attempt_timeout(Duration::from_secs(2))
//!     .deadline(Duration::from_secs(10))
//!     .build()?;
//!
//! // Compare-and-swap on a key's version.
//! let written = client.put("greeting", "hello").await?;
//! let options = PutOptions { if_version: Some(written.version), ..PutOptions::default() };
//! match client.put_with("greeting", "hello again", options).await {
//!     Ok(result) => println!("now at version {}", result.version),
//!     Err(Error::PreconditionFailed { current_version, .. }) => {
//!         println!("someone else wrote it first (version {current_version:?})")
//!     }
//!     Err(other) => return Err(other),
//! }
//! if let Some(read) = client.get("greeting").await? {
//!     println!("{:?} at version {}", read.value, read.version);
//! }
//!
//! // Move money exactly once, even across a failover.
//! client.create_account("alice", 100).await?;
//! client.create_account("bob", 0).await?;
//! let transfer = TransferRequest::new("alice", "bob", 30);
//! match client.transfer(&transfer).await {
//!     Ok(receipt) => println!("alice now holds {}", receipt.from_balance),
//!     Err(Error::InsufficientFunds { .. }) => println!("not enough money"),
//!     // The transfer may still apply: resending the same request settles it exactly once.
//!     Err(Error::Indeterminate { .. }) => {
//!         let receipt = client.transfer(&transfer).await?;
//!         println!("settled: alice now holds {}", receipt.from_balance);
//!     }
//!     Err(other) => return Err(other),
//! }
//! # Ok(())
//! # }
//! ```

pub mod backup;
pub mod bench;
mod client;
mod encoding;
mod endpoints;
mod error;
pub mod limits;
pub mod retry;
#[cfg(test)]
mod testing;
mod transport;
mod txn;
mod types;

pub use client::Client;
pub use client::ClientBuilder;
pub use client::TlsOptions;
pub use error::Error;
pub use error::NodeFailure;
pub use error::Result;
/// The API's wire types (`metrokv-api`), for the calls that take or return them as they are
/// (cluster settings).
pub use metrokv_api as api;
pub use txn::Compare;
pub use txn::CompareOp;
pub use txn::Op;
pub use txn::OpResult;
pub use txn::TxnRequest;
pub use txn::TxnResponse;
pub use types::Account;
pub use types::AccountBalance;
pub use types::AccountListOptions;
pub use types::AccountPage;
pub use types::ClusterStatus;
pub use types::Consistency;
pub use types::DeleteOptions;
pub use types::DeleteResult;
pub use types::KvItem;
pub use types::ListOptions;
pub use types::ListPage;
pub use types::Member;
pub use types::PutOptions;
pub use types::PutResult;
pub use types::RejectReason;
pub use types::ServedBy;
pub use types::TransferOutcome;
pub use types::TransferReceipt;
pub use types::TransferRecord;
pub use types::TransferRequest;
pub use types::Versioned;
