//! Log lines that outside parties can trigger, at most one per source per period, each saying
//! how many were held back since the last: a flood of bad requests must not become a flood of
//! log (12,966 lines/s from one client was seen) on an SD card.

use crate::sync::Locked;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Bound on the sources remembered, so many sources cannot grow memory.
const MAX_SOURCES: usize = 4096;

pub struct LogLimit<K> {
    period: Duration,
    /// Per source: when it last logged, and lines held back since.
    seen: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Hash + Eq> LogLimit<K> {
    pub fn new(period: Duration) -> LogLimit<K> {
        LogLimit {
            period,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held back since the last line)` when `source` may log now; `None` (and one more
    /// held back) when it logged within the period.
    pub fn allow(&self, source: K) -> Option<u64> {
        let mut seen = self.seen.locked();
        let now = Instant::now();
        if seen.len() >= MAX_SOURCES && !seen.contains_key(&source) {
            let period = self.period;
            seen.retain(|_, (at, _)| now.duration_since(*at) < period);
            if seen.len() >= MAX_SOURCES {
                // Every slot is recent: a flood from many sources. Stay quiet rather than grow.
                return None;
            }
        }
        match seen.get_mut(&source) {
            Some((at, held)) if now.duration_since(*at) < self.period => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                seen.insert(source, (now, 0));
                Some(0)
            }
        }
    }
}

/// The limit for lines about what a remote peer did: one line per second per (address, kind
/// of line). One for the whole process, as the peers are.
pub fn per_peer(peer: IpAddr, what: &'static str) -> Option<u64> {
    static LIMIT: LazyLock<LogLimit<(IpAddr, &'static str)>> =
        LazyLock::new(|| LogLimit::new(Duration::from_secs(1)));
    LIMIT.allow((peer, what))
}

/// " (N more suppressed)" for a line that follows held-back ones, else "".
pub fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_source_per_period_with_the_count_held_back() {
        let l = LogLimit::new(Duration::from_millis(50));
        assert_eq!(l.allow("a"), Some(0));
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("b"), Some(0), "another source is not held back");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow("a"), Some(2));
        assert_eq!(suppressed(2), " (2 more suppressed)");
        assert_eq!(suppressed(0), "");
    }
}
