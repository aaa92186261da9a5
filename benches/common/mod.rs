//! What the benches share: this process's figures from /proc.
#![allow(dead_code)]

/// A `VmRSS`/`VmHWM`-style field of /proc/self/status, in kB (0 where there is no /proc).
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
