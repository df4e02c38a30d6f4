//! This process's memory counters from `/proc/self/status`, shared by the
//! benches that measure memory.

/// The `field` line of `/proc/self/status` (`VmRSS`, `VmHWM`, ...) in KiB, or 0
/// when it cannot be read.
pub fn kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
