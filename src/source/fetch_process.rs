//! Fetching in a child process, so a fetch can be given a deadline.
//!
//! libgit2 has no socket timeout that covers every transport, and a thread
//! blocked in a read cannot be stopped safely: a remote that accepts the
//! connection and never answers would hold the fetch forever. So the fetch runs
//! in a child (`nodewave` itself, hidden subcommand [`SUBCOMMAND`]) that gets the
//! source configuration on stdin and prints its outcome as JSON on stdout; the
//! parent kills it when the deadline passes. A killed fetch may leave lock files
//! in the clone cache, which [`super::GitSource::open`] removes before the next
//! one. Reads of commits stay in-process (they are local and fast), so a hanging
//! fetch never delays a rollback.

use std::io::{Read as _, Write as _};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use super::git::{FetchOutcome, GitSource, GitSourceConfig, SourceError};
use super::url::redact_url;

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "internal-git-fetch";

/// Every label `SourceError::metric_label` can return, so the parent can
/// recover a bounded label from the child's answer.
const LABELS: &[&str] = &[
    "config",
    "unreachable",
    "auth",
    "credentials",
    "no_known_hosts",
    "host_key_unknown",
    "host_key_changed",
    "host_key_revoked",
    "tls",
    "ref_not_found",
    "path_not_found",
    "commit_not_found",
    "invalid_file",
    "cache",
    "git",
    "worker_gone",
    "timeout",
];

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Reply {
    Fetched(FetchOutcome),
    #[serde(rename_all = "camelCase")]
    Failed {
        label: String,
        message: String,
        transient: bool,
    },
}

fn label(s: &str) -> &'static str {
    LABELS.iter().find(|l| **l == s).copied().unwrap_or("git")
}

fn failed(label: &'static str, message: String, transient: bool) -> SourceError {
    SourceError::Remote {
        label,
        message,
        transient,
    }
}

/// Runs one fetch of `cfg` in a child process, killed after `timeout`.
pub async fn fetch(cfg: &GitSourceConfig, timeout: Duration) -> Result<FetchOutcome, SourceError> {
    let exe = std::env::current_exe().map_err(|e| {
        failed(
            "git",
            format!("cannot find the nodewave binary to fetch with: {e}"),
            false,
        )
    })?;
    let input = serde_json::to_vec(cfg).map_err(|e| {
        failed(
            "config",
            format!("cannot pass the source to the fetch: {e}"),
            false,
        )
    })?;
    let mut child = tokio::process::Command::new(exe)
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed("git", format!("cannot start the fetch process: {e}"), true))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&input).await.map_err(|e| {
            failed(
                "git",
                format!("cannot pass the source to the fetch: {e}"),
                true,
            )
        })?;
    }
    let url = redact_url(&cfg.url);
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(failed(
                "git",
                format!("the fetch process failed: {e}"),
                true,
            ));
        }
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => {
            return Err(failed(
                "timeout",
                format!(
                    "fetching from {url} did not finish within {}s and was stopped (the remote may accept connections without answering); raise --fetch-timeout if the repository is just slow",
                    timeout.as_secs()
                ),
                true,
            ));
        }
    };
    match serde_json::from_slice::<Reply>(&output.stdout) {
        Ok(Reply::Fetched(o)) => Ok(o),
        Ok(Reply::Failed {
            label: l,
            message,
            transient,
        }) => Err(failed(label(&l), message, transient)),
        Err(_) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(failed(
                "git",
                format!(
                    "the fetch process ended with {} without an answer: {}",
                    output.status,
                    super::url::redact_text(tail.trim())
                ),
                true,
            ))
        }
    }
}

/// The child: reads the source configuration from stdin, fetches once, prints
/// the [`Reply`]. Exit code 0 whenever it could answer.
pub fn child_main() -> ExitCode {
    let mut input = Vec::new();
    let reply = match std::io::stdin()
        .take(1024 * 1024)
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<GitSourceConfig>(&input).map_err(|e| e.to_string()))
    {
        Err(e) => Reply::Failed {
            label: "config".into(),
            message: format!("the fetch process got no valid source configuration: {e}"),
            transient: false,
        },
        Ok(cfg) => match GitSource::open(cfg).and_then(|mut s| s.fetch()) {
            Ok(o) => Reply::Fetched(o),
            Err(e) => Reply::Failed {
                label: e.metric_label().to_string(),
                message: e.to_string(),
                transient: e.is_transient(),
            },
        },
    };
    let out = serde_json::to_vec(&reply).unwrap_or_default();
    let mut stdout = std::io::stdout();
    if stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
