//! Each upstream sink's state as `/healthz`, `/metrics`, the dashboard and the fleet show it:
//! kept by the sinks, read by everyone else without importing them.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::sync::Locked;

/// The sinks' names: they key their cursors, metrics and status.
pub const MYSQL: &str = "mysql";
pub const MQTT: &str = "mqtt";

/// The sinks the config turns on, by name (the name keys their cursors and metrics).
pub fn configured(config: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if config.mysql.is_some() {
        out.push(MYSQL);
    }
    if config.mqtt.is_some() {
        out.push(MQTT);
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
    /// Commands from upstream that were not carried out (Sparkplug: a DCMD on an unknown or
    /// read-only metric, or while writes are off).
    pub commands_ignored: AtomicU64,
    /// The last error, while the upstream is failing.
    pub error: Mutex<Option<String>>,
}

impl SinkStatus {
    pub fn error(&self) -> Option<String> {
        self.error.locked().clone()
    }

    /// Records the state of the connection; logs only when it changes.
    pub fn set_error(&self, sink: &str, e: Option<String>) {
        let mut cur = self.error.locked();
        if *cur != e {
            if let Some(msg) = &e {
                tracing::error!(sink, "upstream failing: {msg}");
            } else {
                tracing::info!(sink, "upstream reachable again");
            }
            *cur = e;
        }
    }
}

/// The state of each upstream sink (shown only for the sinks that are configured).
#[derive(Default, Clone)]
pub struct Sinks {
    pub mysql: Arc<SinkStatus>,
    pub mqtt: Arc<SinkStatus>,
}

impl Sinks {
    /// The sinks the config turns on, by name.
    pub fn configured<'a>(&'a self, config: &Config) -> Vec<(&'static str, &'a SinkStatus)> {
        configured(config)
            .into_iter()
            .map(|name| {
                let status = if name == MQTT {
                    &*self.mqtt
                } else {
                    &*self.mysql
                };
                (name, status)
            })
            .collect()
    }
}
