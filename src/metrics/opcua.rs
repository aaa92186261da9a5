//! The OPC UA server's figures: sessions, monitored items of the gateway's nodes, the
//! requests on those nodes by service and result, and the requests the server refused
//! (`edge_opcua_*`; none while it is off).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::sync::Locked as _;

/// An open session as the Diagnostics view lists it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRow {
    pub user: String,
    /// The client's application URI (the server library tells no peer address).
    pub client: String,
    /// `None`, `Basic256Sha256`, `Aes256_Sha256_RsaPss`.
    pub security: String,
    pub monitored_items: u64,
}

#[derive(Debug, Default)]
pub struct Opcua {
    pub enabled: AtomicBool,
    pub sessions: AtomicU64,
    pub monitored_items: AtomicU64,
    /// Requests the server answered with a fault (a limit passed, a bad session, a refused
    /// channel), and of those the ones refused for security, from its own diagnostics.
    pub rejected: AtomicU64,
    pub security_rejected: AtomicU64,
    /// The open sessions, as last seen by the server (every half second).
    pub session_rows: std::sync::Mutex<Vec<SessionRow>>,
    /// By (service, result): a handful of keys, counted once per request (not per node).
    requests: std::sync::Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Opcua {
    /// One request of `service` that ended with `result` (a StatusCode's name).
    pub fn count(&self, service: &'static str, result: &str) {
        *self
            .requests
            .locked()
            .entry((service, result.to_string()))
            .or_default() += 1;
    }

    pub fn render(&self, out: &mut String) {
        if !self.enabled.load(Relaxed) {
            return;
        }
        let _ = writeln!(
            out,
            "# TYPE edge_opcua_sessions gauge\nedge_opcua_sessions {}",
            self.sessions.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE edge_opcua_monitored_items gauge\nedge_opcua_monitored_items {}",
            self.monitored_items.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE edge_opcua_rejected_requests_total counter\n\
             edge_opcua_rejected_requests_total{{kind=\"all\"}} {}\n\
             edge_opcua_rejected_requests_total{{kind=\"security\"}} {}",
            self.rejected.load(Relaxed),
            self.security_rejected.load(Relaxed)
        );
        out.push_str("# TYPE edge_opcua_requests_total counter\n");
        for ((service, result), n) in self.requests.locked().iter() {
            let _ = writeln!(
                out,
                "edge_opcua_requests_total{{service=\"{service}\",result=\"{result}\"}} {n}"
            );
        }
    }
}
