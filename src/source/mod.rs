//! The Git source: clone, fetch, read a commit's files, and push webhooks.
//!
//! - [`git`]: blocking access to a bare local clone cache ([`GitSource`]).
//! - [`worker`]: an async, cloneable handle that runs a [`GitSource`] on its
//!   own thread ([`SourceWorker`]), plus the retry [`backoff`].
//! - [`webhook`]: push-webhook authentication and parsing (pure).
//! - [`known_hosts`]: SSH host-key verification (pure).
//! - [`signature`]: a commit's signature header and signed data, for
//!   [`crate::verify`].
//! - [`url`]: URL classification and [`redact_url`].

pub mod fetch_process;
pub mod git;
pub mod known_hosts;
pub mod signature;
pub mod url;
pub mod webhook;
pub mod worker;

pub use git::{
    CommitInfo, Credentials, FetchOutcome, GitRef, GitSource, GitSourceConfig, PASSWORD_ENV,
    SourceError, TOKEN_ENV, TreeLimits, TreeStats,
};
pub use signature::CommitSignature;
pub use url::redact_url;
pub use webhook::{Provider, PushEvent, WebhookError};
pub use worker::{SourceWorker, backoff};
