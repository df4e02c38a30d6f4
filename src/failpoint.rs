//! Crash points for the crash-safety tests: with `NODEWAVE_FAILPOINT=<name>` (or
//! `<name>:<n>` for the n-th time) the process aborts when it reaches the point
//! `name`, as a SIGKILL would stop it. Only debug builds (what `cargo test`
//! runs) have them; in a release build [`hit`] is empty.
//!
//! Points: `after-record-write` (a record write succeeded, its actions not yet
//! run), `after-apply` (a template was applied), `after-pod-delete`.

#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static COUNTS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    let Ok(spec) = std::env::var("NODEWAVE_FAILPOINT") else {
        return;
    };
    let (point, nth) = match spec.split_once(':') {
        Some((p, n)) => (p.to_string(), n.parse::<u32>().unwrap_or(1)),
        None => (spec, 1),
    };
    if point != name {
        return;
    }
    let mut counts = COUNTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let n = counts.entry(point).or_insert(0);
    *n += 1;
    if *n == nth {
        eprintln!("failpoint {name} reached ({nth}): aborting");
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
#[inline]
pub fn hit(_name: &str) {}
