//! The Modbus TCP server's figures: open connections, connections refused at accept, clients
//! closed for garbage, and requests by unit, function and result (`edge_modbus_server_*`; none
//! while it is off).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::sync::Locked as _;

#[derive(Debug, Default)]
pub struct ModbusServer {
    pub enabled: AtomicBool,
    pub connections: AtomicU64,
    /// Connections closed at accept: from an address `allowed_clients` does not list, or past
    /// `max_connections`.
    pub refused_not_allowed: AtomicU64,
    pub refused_full: AtomicU64,
    /// Clients closed for a frame that is not Modbus TCP (a wrong protocol id or length, half a
    /// frame left hanging).
    pub closed_garbage: AtomicU64,
    /// By (unit, function code, result): a handful of keys.
    requests: std::sync::Mutex<BTreeMap<(u8, u8, &'static str), u64>>,
}

/// A request's result as the metric labels it: `ok` or the exception's name.
pub fn result_name(exception: Option<u8>) -> &'static str {
    match exception {
        None => "ok",
        Some(0x01) => "illegal_function",
        Some(0x02) => "illegal_address",
        Some(0x03) => "illegal_value",
        Some(0x04) => "device_failure",
        Some(0x06) => "busy",
        Some(0x0A) => "path_unavailable",
        Some(0x0B) => "target_failed",
        Some(_) => "other_exception",
    }
}

impl ModbusServer {
    pub fn count(&self, unit: u8, function: u8, exception: Option<u8>) {
        *self
            .requests
            .locked()
            .entry((unit, function, result_name(exception)))
            .or_default() += 1;
    }

    /// Per unit: requests answered, and of those the ones answered with an exception.
    pub fn per_unit(&self) -> BTreeMap<u8, (u64, u64)> {
        let mut units: BTreeMap<u8, (u64, u64)> = BTreeMap::new();
        for (&(unit, _, result), &n) in self.requests.locked().iter() {
            let e = units.entry(unit).or_default();
            e.0 += n;
            if result != "ok" {
                e.1 += n;
            }
        }
        units
    }

    pub fn render(&self, out: &mut String) {
        if !self.enabled.load(Relaxed) {
            return;
        }
        let _ = writeln!(
            out,
            "# TYPE edge_modbus_server_connections gauge\nedge_modbus_server_connections {}",
            self.connections.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE edge_modbus_server_refused_connections_total counter\n\
             edge_modbus_server_refused_connections_total{{reason=\"not_allowed\"}} {}\n\
             edge_modbus_server_refused_connections_total{{reason=\"full\"}} {}\n\
             edge_modbus_server_refused_connections_total{{reason=\"garbage\"}} {}",
            self.refused_not_allowed.load(Relaxed),
            self.refused_full.load(Relaxed),
            self.closed_garbage.load(Relaxed),
        );
        out.push_str("# TYPE edge_modbus_server_requests_total counter\n");
        for ((unit, function, result), n) in self.requests.locked().iter() {
            let _ = writeln!(
                out,
                "edge_modbus_server_requests_total{{unit=\"{unit}\",function=\"{function}\",result=\"{result}\"}} {n}"
            );
        }
    }
}
