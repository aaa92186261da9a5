//! Counters and gauges the gateway keeps about itself, rendered as Prometheus text.
//!
//! Plain atomics indexed by device and bus: label sets are fixed by the config, so cardinality
//! is bounded and the hot path never takes a lock or hashes a label.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Results a Modbus request is counted under.
pub const REQUEST_RESULTS: [&str; 4] = ["ok", "exception", "timeout", "error"];

#[derive(Default)]
pub struct DeviceCounters {
    /// Indexed like [`REQUEST_RESULTS`].
    pub requests: [AtomicU64; 4],
    pub decode_errors: AtomicU64,
    pub online: AtomicI64,
}

#[derive(Default)]
pub struct BusCounters {
    pub request_seconds_sum_us: AtomicU64,
    pub request_count: AtomicU64,
}

pub struct Metrics {
    device_names: Vec<String>,
    bus_names: Vec<String>,
    pub devices: Vec<DeviceCounters>,
    pub buses: Vec<BusCounters>,
    pub store_rows: AtomicU64,
    pub store_errors: AtomicU64,
}

impl Metrics {
    pub fn new(device_names: Vec<String>, bus_names: Vec<String>) -> Metrics {
        Metrics {
            devices: device_names
                .iter()
                .map(|_| DeviceCounters::default())
                .collect(),
            buses: bus_names.iter().map(|_| BusCounters::default()).collect(),
            device_names,
            bus_names,
            store_rows: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
        }
    }

    pub fn request(&self, device: usize, bus: usize, result: usize, took: std::time::Duration) {
        self.devices[device].requests[result].fetch_add(1, Relaxed);
        self.buses[bus].request_count.fetch_add(1, Relaxed);
        self.buses[bus]
            .request_seconds_sum_us
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn requests(&self, device: usize, result: &str) -> u64 {
        let i = REQUEST_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.devices[device].requests[i].load(Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE edge_modbus_requests_total counter\n");
        for (d, name) in self.device_names.iter().enumerate() {
            for (i, r) in REQUEST_RESULTS.iter().enumerate() {
                let v = self.devices[d].requests[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "edge_modbus_requests_total{{device=\"{name}\",result=\"{r}\"}} {v}"
                );
            }
        }
        out.push_str("# TYPE edge_modbus_decode_errors_total counter\n");
        for (d, name) in self.device_names.iter().enumerate() {
            let v = self.devices[d].decode_errors.load(Relaxed);
            let _ = writeln!(
                out,
                "edge_modbus_decode_errors_total{{device=\"{name}\"}} {v}"
            );
        }
        out.push_str("# TYPE edge_device_online gauge\n");
        for (d, name) in self.device_names.iter().enumerate() {
            let v = self.devices[d].online.load(Relaxed);
            let _ = writeln!(out, "edge_device_online{{device=\"{name}\"}} {v}");
        }
        out.push_str("# TYPE edge_modbus_request_duration_seconds summary\n");
        for (b, name) in self.bus_names.iter().enumerate() {
            let sum = self.buses[b].request_seconds_sum_us.load(Relaxed) as f64 / 1e6;
            let n = self.buses[b].request_count.load(Relaxed);
            let _ = writeln!(
                out,
                "edge_modbus_request_duration_seconds_sum{{bus=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "edge_modbus_request_duration_seconds_count{{bus=\"{name}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# TYPE edge_store_rows_total counter\nedge_store_rows_total {}",
            self.store_rows.load(Relaxed)
        );
        out
    }
}
