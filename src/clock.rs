//! Whether the system clock can be trusted: a Pi has no battery clock, so until NTP answers
//! after a boot its timestamps can be years off.

/// Whether the kernel says the system clock is synchronised (NTP), `None` when it cannot be
/// told: the read-only `adjtimex` is refused under the unit's `ProtectClock=`, and then only
/// systemd-timesyncd's flag file can say yes. A Pi has no battery clock, so until NTP answers
/// after a boot its timestamps can be years off.
pub fn synchronised() -> Option<bool> {
    // SAFETY: adjtimex with `modes = 0` only reads the kernel's clock state into the struct.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&raw mut tx) };
    if state >= 0 {
        return Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0);
    }
    std::path::Path::new("/run/systemd/timesync/synchronized")
        .exists()
        .then_some(true)
}
