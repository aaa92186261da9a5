//! Upstream sinks: each forwards the SQLite outbox (events, device status, telemetry) after its
//! own persisted cursor, and moves the cursor only after the upstream confirmed.

pub mod feed;
pub mod mqtt;
pub mod mysql;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Mutex;

use crate::config::Config;

/// The sinks the config turns on, by name (the name keys their cursors and metrics).
pub fn configured(config: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if config.mysql.is_some() {
        out.push(mysql::SINK);
    }
    if config.mqtt.is_some() {
        out.push(mqtt::SINK);
    }
    out
}

/// What `/healthz` and `/metrics` show of a sink.
#[derive(Default)]
pub struct SinkStatus {
    /// Outbox rows not yet confirmed upstream.
    pub backlog: AtomicI64,
    pub rows_ok: AtomicU64,
    pub rows_failed: AtomicU64,
    /// The last error, while the upstream is failing.
    pub error: Mutex<Option<String>>,
}

impl SinkStatus {
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the state of the connection; logs only when it changes.
    pub fn set_error(&self, sink: &str, e: Option<String>) {
        let mut cur = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != e {
            match &e {
                Some(msg) => tracing::error!(sink, "upstream failing: {msg}"),
                None => tracing::info!(sink, "upstream reachable again"),
            }
            *cur = e;
        }
    }
}
