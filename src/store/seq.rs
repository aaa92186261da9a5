//! Event numbers reserved ahead in a file beside the database (`event-seq`), so that a store
//! removed, replaced or rolled back (a deleted WAL, a restored backup) never numbers an event
//! again with an id that upstream already holds for another one.
//!
//! The file says "every number below this may be in use". The processor writes it (temp
//! file, fsync, rename) before it numbers past it, a block at a time, and exactly on a clean
//! stop. One small write per [`BLOCK`] events: nothing an SD card notices.

use std::path::{Path, PathBuf};

use crate::model::now_ms;

/// The file, in the data directory.
pub const FILE: &str = "event-seq";
/// Numbers reserved at a time.
pub const BLOCK: u64 = 10_000;

/// The first number a store may use: past everything the file reserved and, for a store with
/// no events at all (a first start, or the whole data directory lost), past the wall clock in
/// microseconds — ids numbered since then grew by less than a million a second. A clock
/// before 2024 (a board without a battery, before NTP) is not trusted for that.
pub fn first(data_dir: &Path, stored_last: u64) -> u64 {
    let reserved = std::fs::read_to_string(data_dir.join(FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let clock = if stored_last == 0 && reserved == 0 {
        clock_floor()
    } else {
        0
    };
    (stored_last + 1).max(reserved).max(clock).max(1)
}

/// The wall clock in microseconds, when it is plausible (after 2024-01-01).
fn clock_floor() -> u64 {
    const Y2024_MS: i64 = 1_704_067_200_000;
    let ms = now_ms();
    if ms > Y2024_MS {
        ms as u64 * 1000
    } else {
        0
    }
}

/// The numbers reserved so far, and the file that says so.
pub struct Reserved {
    path: PathBuf,
    upto: u64,
    /// A write failed and was logged: said once, not per event.
    failing: bool,
}

impl Reserved {
    /// Nothing reserved yet by this run: the first number taken writes the file.
    pub fn new(data_dir: &Path) -> Reserved {
        Reserved {
            path: data_dir.join(FILE),
            upto: 0,
            failing: false,
        }
    }

    /// Before `seq` is used: reserves the next block when `seq` is past the last one.
    pub fn cover(&mut self, seq: u64) {
        if seq >= self.upto {
            self.write(seq + BLOCK);
        }
    }

    /// On a clean stop: exactly the next number, so a restart does not skip a block.
    pub fn close(&mut self, next: u64) {
        if self.upto > 0 {
            self.write(next);
        }
    }

    fn write(&mut self, upto: u64) {
        match crate::config::versions::write_atomically(&self.path, format!("{upto}\n").as_bytes())
        {
            Ok(()) => {
                self.upto = upto;
                if std::mem::take(&mut self.failing) {
                    tracing::info!(
                        "event numbers are reserved in {} again",
                        self.path.display()
                    );
                }
            }
            Err(e) => {
                // The events are still numbered and stored; what is lost is the guarantee for a
                // store that is lost too. Tried again at the next event.
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(
                        "cannot reserve event numbers in {}: {e} (ids could repeat if the database is lost too)",
                        self.path.display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_store_numbers_past_what_was_reserved() {
        let dir = tempfile::tempdir().unwrap();
        // No file, no events: past the clock.
        assert!(first(dir.path(), 0) > 1_700_000_000_000_000);
        let mut r = Reserved::new(dir.path());
        r.cover(5);
        assert_eq!(first(dir.path(), 0), 5 + BLOCK);
        // The store lost after event 9,000 of the block: still past the block.
        r.cover(9_000);
        assert_eq!(first(dir.path(), 0), 5 + BLOCK);
        r.cover(5 + BLOCK);
        assert_eq!(first(dir.path(), 0), 5 + 2 * BLOCK);
        // A clean stop says exactly where to go on; a store ahead of the file wins.
        r.close(10_020);
        assert_eq!(first(dir.path(), 0), 10_020);
        assert_eq!(first(dir.path(), 20_000), 20_001);
    }
}
