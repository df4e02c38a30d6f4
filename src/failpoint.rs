//! Crash points for the crash-safety tests: with `NODEWAVE_FAILPOINT=<name>` (or
//! `<name>:<n>` for the n-th time) the process aborts when it reaches the point
//! `name`, as a SIGKILL would stop it. Only debug builds (what `cargo test`
//! runs) have them; in a release build [`hit`] is empty.
//!
//! Points: `after-record-write` (a record write succeeded, its actions not yet
//! run), `after-apply` (a template was applied), `after-pod-delete`; and
//! `validate-panic` and `load-panic`, which panic (see [`panic_at`]) while a
//! commit is validated or, after validation, decorated for applying, as a bug
//! hit by hostile input would.

/// Aborts the process at point `name` when `NODEWAVE_FAILPOINT` selects it.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    if reached(name) {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}

/// Panics at point `name` when `NODEWAVE_FAILPOINT` selects it.
#[cfg(debug_assertions)]
pub fn panic_at(name: &str) {
    assert!(!reached(name), "failpoint {name} reached: panicking");
}

/// Whether this is the selected (n-th) arrival at point `name`.
#[cfg(debug_assertions)]
fn reached(name: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static COUNTS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    let Ok(spec) = std::env::var("NODEWAVE_FAILPOINT") else {
        return false;
    };
    let (point, nth) = match spec.split_once(':') {
        Some((p, n)) => (p.to_string(), n.parse::<u32>().unwrap_or(1)),
        None => (spec, 1),
    };
    if point != name {
        return false;
    }
    let mut counts = COUNTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let n = counts.entry(point).or_insert(0);
    *n += 1;
    *n == nth
}

#[cfg(not(debug_assertions))]
#[inline]
pub fn hit(_name: &str) {}

#[cfg(not(debug_assertions))]
#[inline]
pub fn panic_at(_name: &str) {}
