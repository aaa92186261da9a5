//! What `/healthz` reports: serving or failing (the store cannot write), and each problem that
//! does not stop serving but that a monitor should see (`degraded`).

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value as Json};

use crate::api::Shared;
use crate::state;

/// A sink this far behind is backing up (outbox rows not yet confirmed upstream).
pub const BACKING_UP_ROWS: i64 = 10_000;
/// The store is near its cap past this share of `store.max_db_mb` (database + WAL).
const NEAR_CAP: f64 = 0.9;
/// Offline devices named in a `degraded` line, at most (the count is always given).
const NAMED: usize = 5;

/// SPEC's `/healthz` body, and whether the gateway is serving (200) or failing (503).
pub fn report(s: &Shared) -> (bool, Json) {
    let ok = s.store.healthy.load(Relaxed);
    let mut degraded = Vec::new();
    let (online, total) = {
        let live = state::read(&s.live);
        let offline: Vec<&str> = live
            .devices
            .iter()
            .zip(&s.config.devices)
            .filter(|(l, _)| !l.online)
            .map(|(_, d)| d.id.as_str())
            .collect();
        if !offline.is_empty() {
            let more = offline.len().saturating_sub(NAMED);
            let mut names = offline[..offline.len().min(NAMED)].join(", ");
            if more > 0 {
                names = format!("{names} and {more} more");
            }
            degraded.push(format!(
                "devices offline: {} of {} ({names})",
                offline.len(),
                live.devices.len()
            ));
        }
        (live.online_count(), live.devices.len())
    };
    let mut sinks = serde_json::Map::new();
    for (name, m) in s.sinks.configured(&s.config) {
        let backlog = m.backlog.load(Relaxed);
        let mut v = json!({ "backlog": backlog });
        if let Some(e) = m.error() {
            degraded.push(format!("sink {name} failing: {e}"));
            v["error"] = e.into();
        }
        if backlog >= BACKING_UP_ROWS {
            degraded.push(format!(
                "sink {name} backing up: {backlog} rows not yet sent"
            ));
        }
        sinks.insert(name.into(), v);
    }
    let (db, wal) = crate::store::file_sizes(&s.config.gateway.data_dir);
    let cap = s.config.store.max_db_mb * 1024 * 1024;
    if cap > 0 && (db + wal) as f64 >= cap as f64 * NEAR_CAP {
        degraded.push(format!(
            "store near its cap: {:.1} of {} MiB (store.max_db_mb); the oldest history goes first",
            (db + wal) as f64 / 1_048_576.0,
            s.config.store.max_db_mb
        ));
    }
    if crate::clock::synchronised() == Some(false) {
        degraded.push(
            "clock not synchronised: timestamps may be wrong until NTP has set it".to_string(),
        );
    }
    let body = json!({
        "status": if ok { "ok" } else { "failing" },
        "devices": {"online": online, "total": total},
        "sinks": sinks,
        "store": {"dbBytes": db, "walBytes": wal},
        "degraded": degraded,
    });
    (ok, body)
}
