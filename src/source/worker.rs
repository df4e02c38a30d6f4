//! Async handle to a [`GitSource`] running on its own thread.
//!
//! libgit2 calls block (network, disk) and its objects are not `Send`/`Sync`
//! friendly, so one dedicated `std::thread` owns the source and serves
//! requests from a channel; async callers await a oneshot reply. Requests are
//! served in order, one at a time, so a fetch never races another fetch or a
//! read. Fetch requests that queue up while the thread is busy (a webhook
//! arriving during a poll) are answered together by a single fetch.
//!
//! The thread ends when the last handle is dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::git::{
    CommitInfo, FetchOutcome, GitSource, GitSourceConfig, SourceError, TreeLimits, TreeStats,
};
use super::signature::CommitSignature;
use crate::manifest::ManifestFile;

/// Requests queued beyond this make callers wait (backpressure) rather than
/// grow memory without bound.
const QUEUE_DEPTH: usize = 64;

type Reply<T> = oneshot::Sender<Result<T, SourceError>>;

enum Request {
    Fetch(Reply<FetchOutcome>),
    FilesAt(String, Reply<Vec<ManifestFile>>),
    CommitInfo(String, Reply<CommitInfo>),
    IsAncestor(String, String, Reply<bool>),
    HasFileNamed(String, &'static [&'static str], Reply<bool>),
    HasTrackedFile(String, &'static str, Reply<bool>),
    ReadTrackedFile(String, &'static str, Reply<Option<ManifestFile>>),
    WriteTree(String, std::path::PathBuf, TreeLimits, Reply<TreeStats>),
    CommitSignature(String, Reply<CommitSignature>),
}

/// Cloneable async handle; see the module docs.
#[derive(Clone, Debug)]
pub struct SourceWorker {
    tx: mpsc::Sender<Request>,
    head: Arc<watch::Sender<Option<String>>>,
    /// When the last successful fetch started.
    fetched: Arc<watch::Sender<Option<Instant>>>,
}

impl SourceWorker {
    /// Opens the clone cache (no network) and starts the worker thread.
    pub fn open(cfg: GitSourceConfig) -> Result<Self, SourceError> {
        Self::spawn(GitSource::open(cfg)?)
    }

    /// Starts the worker thread around an opened source.
    pub fn spawn(source: GitSource) -> Result<Self, SourceError> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let head = Arc::new(watch::Sender::new(source.head()));
        let fetched = Arc::new(watch::Sender::new(None));
        let (head_tx, fetched_tx) = (head.clone(), fetched.clone());
        std::thread::Builder::new()
            .name("nodewave-git".to_owned())
            .spawn(move || run(source, rx, &head_tx, &fetched_tx))
            .map_err(|e| SourceError::Git {
                context: "cannot start the git worker thread".to_owned(),
                cause: e.to_string(),
            })?;
        Ok(Self { tx, head, fetched })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, SourceError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(make(reply_tx))
            .await
            .map_err(|_| SourceError::WorkerGone)?;
        reply_rx.await.map_err(|_| SourceError::WorkerGone)?
    }

    pub async fn fetch(&self) -> Result<FetchOutcome, SourceError> {
        self.call(Request::Fetch).await
    }

    pub async fn files_at(&self, commit: String) -> Result<Vec<ManifestFile>, SourceError> {
        self.call(|r| Request::FilesAt(commit, r)).await
    }

    pub async fn commit_info(&self, commit: String) -> Result<CommitInfo, SourceError> {
        self.call(|r| Request::CommitInfo(commit, r)).await
    }

    pub async fn is_ancestor(
        &self,
        ancestor: String,
        descendant: String,
    ) -> Result<bool, SourceError> {
        self.call(|r| Request::IsAncestor(ancestor, descendant, r))
            .await
    }

    /// Whether a file with one of `names` is under the tracked sub-path at
    /// `commit` (tree objects only; see [`GitSource::has_file_named`]).
    pub async fn has_file_named(
        &self,
        commit: String,
        names: &'static [&'static str],
    ) -> Result<bool, SourceError> {
        self.call(|r| Request::HasFileNamed(commit, names, r)).await
    }

    /// Whether the file `name` (hidden names included) lies in the tracked
    /// directory at `commit` (see [`GitSource::has_tracked_file`]).
    pub async fn has_tracked_file(
        &self,
        commit: String,
        name: &'static str,
    ) -> Result<bool, SourceError> {
        self.call(|r| Request::HasTrackedFile(commit, name, r))
            .await
    }

    /// The file `name` of the tracked directory at `commit`, if there is one
    /// (see [`GitSource::read_tracked_file`]).
    pub async fn read_tracked_file(
        &self,
        commit: String,
        name: &'static str,
    ) -> Result<Option<ManifestFile>, SourceError> {
        self.call(|r| Request::ReadTrackedFile(commit, name, r))
            .await
    }

    /// Writes the whole tree of `commit` below `dest` (see [`GitSource::write_tree`]).
    pub async fn write_tree(
        &self,
        commit: String,
        dest: std::path::PathBuf,
        limits: TreeLimits,
    ) -> Result<TreeStats, SourceError> {
        self.call(|r| Request::WriteTree(commit, dest, limits, r))
            .await
    }

    /// The commit's signature header and signed data, for [`crate::verify`].
    pub async fn commit_signature(&self, commit: String) -> Result<CommitSignature, SourceError> {
        self.call(|r| Request::CommitSignature(commit, r)).await
    }

    /// Last fetched head (from the clone cache at start, then after every
    /// successful fetch). Does not wait for the worker.
    pub fn head(&self) -> Option<String> {
        self.head.borrow().clone()
    }

    /// When the last successful fetch of this process started (`None` before
    /// the first): everything pushed before that instant was seen by it.
    pub fn last_fetch_started(&self) -> Option<Instant> {
        *self.fetched.borrow()
    }

    /// Records a successful fetch made elsewhere into the same clone (the fetch
    /// child process of `crate::source::fetch_process`).
    pub fn note_fetch(&self, started: Instant, head: &str) {
        note_fetch(&self.head, &self.fetched, started, head);
    }

    /// Watch the head: changes after each fetch that moved it.
    pub fn subscribe_head(&self) -> watch::Receiver<Option<String>> {
        self.head.subscribe()
    }
}

fn run(
    mut source: GitSource,
    mut rx: mpsc::Receiver<Request>,
    head_tx: &watch::Sender<Option<String>>,
    fetched_tx: &watch::Sender<Option<Instant>>,
) {
    let mut deferred: VecDeque<Request> = VecDeque::new();
    loop {
        let request = match deferred.pop_front() {
            Some(r) => r,
            None => match rx.blocking_recv() {
                Some(r) => r,
                None => break,
            },
        };
        match request {
            Request::Fetch(first) => {
                // Coalesce fetches already queued: they would see the same
                // remote state. Other requests keep their order after it.
                let mut waiters = vec![first];
                while let Ok(next) = rx.try_recv() {
                    match next {
                        Request::Fetch(r) => waiters.push(r),
                        other => deferred.push_back(other),
                    }
                }
                let started = Instant::now();
                let result = source.fetch();
                if let Ok(outcome) = &result {
                    note_fetch(head_tx, fetched_tx, started, &outcome.head);
                }
                for waiter in waiters {
                    // A caller that gave up (timeout, shutdown) is fine.
                    let _ = waiter.send(result.clone());
                }
            }
            Request::FilesAt(commit, reply) => {
                let _ = reply.send(source.files_at(&commit));
            }
            Request::CommitInfo(commit, reply) => {
                let _ = reply.send(source.commit_info(&commit));
            }
            Request::IsAncestor(ancestor, descendant, reply) => {
                let _ = reply.send(source.is_ancestor(&ancestor, &descendant));
            }
            Request::HasFileNamed(commit, names, reply) => {
                let _ = reply.send(source.has_file_named(&commit, names));
            }
            Request::HasTrackedFile(commit, name, reply) => {
                let _ = reply.send(source.has_tracked_file(&commit, name));
            }
            Request::ReadTrackedFile(commit, name, reply) => {
                let _ = reply.send(source.read_tracked_file(&commit, name));
            }
            Request::WriteTree(commit, dest, limits, reply) => {
                let _ = reply.send(source.write_tree(&commit, &dest, &limits));
            }
            Request::CommitSignature(commit, reply) => {
                let _ = reply.send(source.commit_signature(&commit));
            }
        }
    }
    tracing::debug!("git worker stopped: all handles dropped");
}

fn note_fetch(
    head_tx: &watch::Sender<Option<String>>,
    fetched_tx: &watch::Sender<Option<Instant>>,
    started: Instant,
    head: &str,
) {
    fetched_tx.send_replace(Some(started));
    head_tx.send_if_modified(|h| {
        if h.as_deref() == Some(head) {
            false
        } else {
            *h = Some(head.to_string());
            true
        }
    });
}

/// Delay before retry number `attempt` (0-based) after a failed fetch:
/// 1 s, 2 s, 4 s, ... capped at 5 minutes. Pure; callers may add jitter.
pub fn backoff(attempt: u32) -> Duration {
    // 5 minutes.
    const CAP_SECS: u64 = 300;
    let secs = 1u64.checked_shl(attempt).unwrap_or(u64::MAX).min(CAP_SECS);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(8), Duration::from_secs(256));
        assert_eq!(backoff(9), Duration::from_mins(5));
        assert_eq!(backoff(63), Duration::from_mins(5));
        assert_eq!(backoff(64), Duration::from_mins(5));
        assert_eq!(backoff(u32::MAX), Duration::from_mins(5));
        for n in 0..100 {
            assert!(backoff(n) <= backoff(n + 1));
        }
    }
}
