//! Running one renderer as a subprocess, bounded: a time limit (the whole
//! process group is killed when it passes), an output limit (reading stops and
//! the group is killed past it), stderr kept up to a small size, stdin closed.
//! The environment is whatever the caller gives; nothing is inherited.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Stderr kept for the error message; the rest is read and dropped so the
/// renderer never blocks on a full pipe.
const MAX_STDERR: usize = 64 * 1024;

/// One renderer run.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// The complete environment of the process.
    pub env: Vec<(String, OsString)>,
    pub timeout: Duration,
    pub max_stdout: usize,
}

#[derive(Debug)]
pub enum RunError {
    Spawn(std::io::Error),
    TimedOut(Duration),
    OutputTooLarge(usize),
    Failed { status: ExitStatus, stderr: String },
    NotUtf8,
}

enum Event {
    Stdout(Option<Vec<u8>>),
    Stderr(Vec<u8>),
    Exited(std::io::Result<ExitStatus>),
}

/// Runs `inv` and returns its stdout when it exits with status 0.
pub fn run(inv: &Invocation) -> Result<String, RunError> {
    let mut command = Command::new(&inv.program);
    command
        .args(&inv.args)
        .current_dir(&inv.cwd)
        .env_clear()
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout also kills what it started (git, plugins).
        .process_group(0);
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    let group = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let kill_group = || {
        if let Some(pid) = group {
            // Fails with ESRCH when everything has exited already.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    };

    let (tx, rx) = mpsc::channel();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group();
        let _ = child.wait();
        return Err(RunError::Spawn(std::io::Error::other(
            "no pipes to the renderer",
        )));
    };
    let max = inv.max_stdout;
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if buf.len() + n > max {
                        let _ = out_tx.send(Event::Stdout(None));
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        let _ = out_tx.send(Event::Stdout(Some(buf)));
    });
    let err_tx = tx.clone();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 8 * 1024];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_STDERR.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&chunk[..room]);
                }
            }
        }
        let _ = err_tx.send(Event::Stderr(kept));
    });
    std::thread::spawn(move || {
        let _ = tx.send(Event::Exited(child.wait()));
    });

    let deadline = Instant::now() + inv.timeout;
    let (mut out, mut err, mut status) = (None, None, None);
    while out.is_none() || err.is_none() || status.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Stdout(Some(b))) => out = Some(b),
            Ok(Event::Stdout(None)) => {
                kill_group();
                return Err(RunError::OutputTooLarge(inv.max_stdout));
            }
            Ok(Event::Stderr(b)) => err = Some(b),
            Ok(Event::Exited(s)) => status = Some(s.map_err(RunError::Spawn)?),
            // Also when the renderer exited but something it started holds the output open.
            Err(_) => {
                kill_group();
                return Err(RunError::TimedOut(inv.timeout));
            }
        }
    }
    kill_group();
    let (Some(out), Some(err), Some(status)) = (out, err, status) else {
        return Err(RunError::NotUtf8);
    };
    if !status.success() {
        return Err(RunError::Failed {
            status,
            stderr: String::from_utf8_lossy(&err).into_owned(),
        });
    }
    String::from_utf8(out).map_err(|_| RunError::NotUtf8)
}

/// `name` on the `PATH` of this process (the renderers get an empty `PATH` when
/// hermetic, so the program is resolved before).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration, max_stdout: usize) -> Result<String, RunError> {
        run(&Invocation {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: vec![("ONLY".into(), "this".into())],
            timeout,
            max_stdout,
        })
    }

    #[test]
    fn stdout_of_a_successful_run_and_only_the_given_environment() {
        let out = sh(
            "echo \"$ONLY ${HOME:-nohome}\"",
            Duration::from_secs(10),
            1024,
        )
        .unwrap();
        assert_eq!(out, "this nohome\n");
    }

    #[test]
    fn failures_carry_stderr() {
        match sh("echo oops >&2; exit 3", Duration::from_secs(10), 1024) {
            Err(RunError::Failed { status, stderr }) => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "oops\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_run_past_its_time_limit_is_killed_with_its_children() {
        let start = Instant::now();
        // The background sleep keeps stdout open: only killing the group ends it.
        let r = sh("sleep 30 & sleep 30", Duration::from_millis(300), 1024);
        assert!(matches!(r, Err(RunError::TimedOut(_))), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn output_past_the_limit_stops_the_run() {
        let r = sh("yes nodewave", Duration::from_secs(30), 100_000);
        assert!(matches!(r, Err(RunError::OutputTooLarge(100_000))), "{r:?}");
        let r = sh(
            "head -c 100000 /dev/zero | tr '\\0' a",
            Duration::from_secs(30),
            100_000,
        );
        assert_eq!(r.unwrap().len(), 100_000);
    }

    #[test]
    fn missing_programs_fail_to_spawn() {
        let r = run(&Invocation {
            program: PathBuf::from("/nonexistent/helm"),
            args: Vec::new(),
            cwd: std::env::temp_dir(),
            env: Vec::new(),
            timeout: Duration::from_secs(1),
            max_stdout: 1,
        });
        assert!(matches!(r, Err(RunError::Spawn(_))));
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("nodewave-no-such-program").is_none());
    }
}
