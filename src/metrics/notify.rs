//! Each notifier's figures: messages by result, its backlog, its last success and last error
//! (`edge_notifications_total`, `edge_notifier_backlog`, and the Diagnostics view's rows).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::label::label_value;
use crate::model::Millis;
use crate::sync::Locked as _;

/// How one message ended, counted in `edge_notifications_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    /// The receiver took it (HTTP 2xx, SMTP 250).
    Ok,
    /// The attempt failed; it is tried again.
    Failed,
    /// Not sent: its alarm is shelved.
    Shelved,
}

const RESULTS: [(Result, &str); 3] = [
    (Result::Ok, "ok"),
    (Result::Failed, "failed"),
    (Result::Shelved, "shelved"),
];

#[derive(Debug, Default)]
pub struct Status {
    counts: [AtomicU64; 3],
    /// Messages queued for it, due or not.
    pub backlog: AtomicI64,
    pub last_ok: Mutex<Option<Millis>>,
    pub last_error: Mutex<Option<(Millis, String)>>,
}

impl Status {
    pub fn count(&self, r: Result, n: u64) {
        self.counts[r as usize].fetch_add(n, Relaxed);
    }

    pub fn counted(&self, r: Result) -> u64 {
        self.counts[r as usize].load(Relaxed)
    }
}

/// By notifier name; kept across reloads (counters are counters).
#[derive(Debug, Default)]
pub struct Notifiers {
    by_name: Mutex<BTreeMap<String, Arc<Status>>>,
}

impl Notifiers {
    pub fn status(&self, name: &str) -> Arc<Status> {
        Arc::clone(self.by_name.locked().entry(name.to_string()).or_default())
    }

    pub fn render(&self, out: &mut String) {
        let all = self.by_name.locked();
        if all.is_empty() {
            return;
        }
        out.push_str("# TYPE edge_notifications_total counter\n");
        for (name, s) in all.iter() {
            for (r, label) in RESULTS {
                let _ = writeln!(
                    out,
                    "edge_notifications_total{{notifier=\"{}\",result=\"{label}\"}} {}",
                    label_value(name),
                    s.counted(r)
                );
            }
        }
        out.push_str("# TYPE edge_notifier_backlog gauge\n");
        for (name, s) in all.iter() {
            let _ = writeln!(
                out,
                "edge_notifier_backlog{{notifier=\"{}\"}} {}",
                label_value(name),
                s.backlog.load(Relaxed)
            );
        }
    }
}
