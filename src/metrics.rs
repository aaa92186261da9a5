//! Counters and gauges the gateway keeps about itself, rendered as Prometheus text.
//!
//! Plain atomics indexed by device and bus: label sets are fixed by the config, so cardinality
//! is bounded and the hot path never takes a lock or hashes a label.

use std::fmt::Write;

pub mod http;
mod label;
pub mod modbus_server;
pub mod notify;
pub mod opcua;
mod process;
pub mod sinks;
pub use process::{fd_limit, kernel_written_bytes, open_fds, rss_bytes};
pub mod wire;

use crate::model::event::Priority;
use label::label_value;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// How a Modbus request ended, counted in `edge_modbus_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    /// The device answered with data.
    Ok,
    /// The device answered with a Modbus exception.
    Exception,
    /// No answer within the bus's `timeout_ms`.
    Timeout,
    /// Any other link fault: refused, reset, a bad frame or CRC.
    Error,
}

impl RequestResult {
    pub const ALL: [RequestResult; 4] = [
        RequestResult::Ok,
        RequestResult::Exception,
        RequestResult::Timeout,
        RequestResult::Error,
    ];

    /// The metric's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::Exception => "exception",
            RequestResult::Timeout => "timeout",
            RequestResult::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<RequestResult> {
        RequestResult::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Default)]
pub struct DeviceCounters {
    /// Indexed by [`RequestResult`].
    pub requests: [AtomicU64; RequestResult::ALL.len()],
    pub decode_errors: AtomicU64,
    pub online: AtomicI64,
    /// The last poll problem and when (ms since the epoch), for the diagnostics view.
    pub last_error: std::sync::Mutex<Option<(crate::model::Millis, String)>>,
}

/// Per bus: how long its requests take. The histogram's sum is the bus's busy time, which over
/// the wall time since start is its utilisation.
#[derive(Default)]
pub struct BusCounters {
    pub duration: Histogram,
    /// Why the link is down (`None`: up, or not yet tried), for the diagnostics view.
    pub down: std::sync::Mutex<Option<String>>,
    /// The link's wire figures, handed over when its bus task starts (or is kept by a reload).
    pub wire: std::sync::OnceLock<std::sync::Arc<wire::Wire>>,
}

/// The cumulative request counters at one instant: kept every 30 s for 5 minutes, so the
/// diagnostics can say what happened in the last 5 minutes.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: std::time::Instant,
    /// Per device, indexed by [`RequestResult`].
    pub requests: Vec<[u64; RequestResult::ALL.len()]>,
    /// Per bus: busy time in seconds (the request duration histogram's sum).
    pub busy_s: Vec<f64>,
    /// Per bus: bytes on its wire both ways (0 before its link counts them).
    pub wire_bytes: Vec<u64>,
}

/// How many samples are kept: 5 minutes and one at 30 s apart.
pub const SAMPLES_KEPT: usize = 11;

/// What a push carries, counted in `edge_push_messages_total{kind}`; in the order a full client
/// queue gives them up (snapshots first: the next one replaces them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    Snapshot,
    Telemetry,
    Event,
}

impl PushKind {
    pub const ALL: [PushKind; 3] = [PushKind::Snapshot, PushKind::Telemetry, PushKind::Event];

    pub fn as_str(self) -> &'static str {
        match self {
            PushKind::Snapshot => "snapshot",
            PushKind::Telemetry => "telemetry",
            PushKind::Event => "event",
        }
    }
}

/// A histogram with fixed buckets in seconds, sized for millisecond latencies.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

const BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Relaxed) as f64 / 1e9
    }

    /// The upper bound (seconds) of the bucket holding quantile `q`; infinity past the last.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        let rank = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen >= rank.max(1) {
                return BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            }
        }
        f64::INFINITY
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// WebSocket push figures.
#[derive(Default)]
pub struct PushCounters {
    /// `[kind][0 = sent, 1 = dropped]`, by [`PushKind`].
    pub messages: [[AtomicU64; 2]; 3],
    /// `push.event` drops by the event's priority rank (`edge_push_events_dropped_total`).
    pub event_drops: [AtomicU64; 3],
    pub clients: AtomicI64,
    /// Time to hand one push to every recipient's queue.
    pub duration: Histogram,
    /// Sample read (or push created) → frame handed to the socket.
    pub latency: Histogram,
}

impl PushCounters {
    pub fn sent(&self, kind: PushKind) {
        self.messages[kind as usize][0].fetch_add(1, Relaxed);
    }
    pub fn dropped(&self, kind: PushKind) {
        self.messages[kind as usize][1].fetch_add(1, Relaxed);
    }
    /// A dropped `push.event`'s priority, beside its count in `dropped`.
    pub fn dropped_event(&self, priority: Priority) {
        self.event_drops[priority.rank() as usize].fetch_add(1, Relaxed);
    }
    pub fn count(&self, kind: PushKind, dropped: bool) -> u64 {
        self.messages[kind as usize][usize::from(dropped)].load(Relaxed)
    }
}

/// Event engine figures.
pub struct EventCounters {
    /// `[event type][0 = committed, 1 = suppressed]`, types in `EventType::ALL` order.
    pub processed: [[AtomicU64; 2]; crate::model::event::EventType::ALL.len()],
    /// Per device, events suppressed by storm control.
    pub suppressed: Vec<AtomicU64>,
    /// Draft made (sample read) → committed and pushed.
    pub duration: Histogram,
    /// Queue length per priority: normal, high, emergency.
    pub queue: [AtomicI64; 3],
}

pub struct Metrics {
    pub push: PushCounters,
    pub events: EventCounters,
    /// Point results that went through the pipeline (state, rules).
    pub samples: AtomicU64,
    device_names: Vec<String>,
    bus_names: Vec<String>,
    pub devices: Vec<DeviceCounters>,
    pub buses: Vec<BusCounters>,
    pub store_rows: AtomicU64,
    pub store_errors: AtomicU64,
    /// The store's own count of the bytes its commits cause to be written, for kernels that do
    /// not count a process's disk writes (see [`Metrics::written_bytes`]).
    pub store_written: AtomicU64,
    /// Progress stamps for the systemd watchdog.
    pub beats: Beats,
    /// SIGHUP reloads by outcome ([`Reload`]), carried from one gateway to the next.
    pub reloads: [AtomicU64; 3],
    pub opcua: opcua::Opcua,
    pub modbus_server: modbus_server::ModbusServer,
    pub notifiers: notify::Notifiers,
    pub tls: http::Tls,
    started: std::time::Instant,
    /// [`Sample`]s, oldest first.
    pub windows: std::sync::Mutex<std::collections::VecDeque<Sample>>,
}

/// How a SIGHUP reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The new config runs.
    Applied,
    /// The file had problems: the running config stays.
    Refused,
    /// Valid, but it could not start (its address taken, say): the previous config runs again.
    Failed,
}

impl Reload {
    pub const ALL: [Reload; 3] = [Reload::Applied, Reload::Refused, Reload::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Reload::Applied => "applied",
            Reload::Refused => "refused",
            Reload::Failed => "failed",
        }
    }
}

impl Metrics {
    /// Counts one reload, on top of the counts `before` (the previous gateway's).
    pub fn count_reload(&self, before: &Metrics, outcome: Reload) {
        for r in Reload::ALL {
            let n = before.reloads[r as usize].load(Relaxed) + u64::from(r == outcome);
            self.reloads[r as usize].store(n, Relaxed);
        }
    }
}

/// When each long-lived task last made progress, in ms since start: the watchdog pings
/// systemd only while all of them move.
pub struct Beats {
    pub buses: Vec<AtomicU64>,
    pub pipeline: AtomicU64,
    started: std::time::Instant,
}

impl Beats {
    fn new(buses: usize) -> Beats {
        Beats {
            buses: (0..buses).map(|_| AtomicU64::new(0)).collect(),
            pipeline: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn beat(&self, stamp: &AtomicU64) {
        stamp.store(self.now(), Relaxed);
    }

    /// How long ago a stamp was made.
    pub fn age(&self, stamp: &AtomicU64) -> std::time::Duration {
        std::time::Duration::from_millis(self.now().saturating_sub(stamp.load(Relaxed)))
    }
}

impl Metrics {
    /// Bytes written to storage: the kernel's count where it keeps one, else the store's own
    /// (every WAL frame its commits append, counted again for the checkpoint that copies it
    /// into the database: an upper bound that leaves out only the small log writes).
    pub fn written_bytes(&self) -> u64 {
        kernel_written_bytes().unwrap_or_else(|| self.store_written.load(Relaxed))
    }

    pub fn new(device_names: Vec<String>, bus_names: Vec<String>) -> Metrics {
        Metrics {
            samples: AtomicU64::new(0),
            push: PushCounters::default(),
            events: EventCounters {
                processed: Default::default(),
                suppressed: device_names.iter().map(|_| AtomicU64::new(0)).collect(),
                duration: Histogram::default(),
                queue: Default::default(),
            },
            devices: device_names
                .iter()
                .map(|_| DeviceCounters::default())
                .collect(),
            buses: bus_names.iter().map(|_| BusCounters::default()).collect(),
            beats: Beats::new(bus_names.len()),
            // Label values as Prometheus reads them: a `"` in a device id broke the whole scrape.
            device_names: device_names.iter().map(|n| label_value(n)).collect(),
            bus_names: bus_names.iter().map(|n| label_value(n)).collect(),
            store_rows: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            store_written: AtomicU64::new(0),
            reloads: Default::default(),
            opcua: opcua::Opcua::default(),
            modbus_server: modbus_server::ModbusServer::default(),
            notifiers: notify::Notifiers::default(),
            tls: http::Tls::default(),
            started: crate::process_started(),
            windows: std::sync::Mutex::default(),
        }
    }

    /// The request counters now.
    pub fn sample(&self) -> Sample {
        Sample {
            at: std::time::Instant::now(),
            requests: self
                .devices
                .iter()
                .map(|d| std::array::from_fn(|i| d.requests[i].load(Relaxed)))
                .collect(),
            busy_s: self
                .buses
                .iter()
                .map(|b| b.duration.sum_seconds())
                .collect(),
            wire_bytes: (self.buses.iter())
                .map(|b| b.wire.get().map_or(0, |w| w.bytes()))
                .collect(),
        }
    }

    /// Keeps the counters now as the newest sample (the oldest beyond [`SAMPLES_KEPT`] go).
    pub fn keep_sample(&self) {
        let s = self.sample();
        let mut w = crate::sync::Locked::locked(&self.windows);
        w.push_back(s);
        while w.len() > SAMPLES_KEPT {
            w.pop_front();
        }
    }

    pub fn request(
        &self,
        device: usize,
        bus: usize,
        result: RequestResult,
        took: std::time::Duration,
    ) {
        self.devices[device].requests[result as usize].fetch_add(1, Relaxed);
        self.buses[bus].duration.observe(took);
    }

    pub fn requests(&self, device: usize, result: RequestResult) -> u64 {
        self.devices[device].requests[result as usize].load(Relaxed)
    }

    /// Every metric in Prometheus text format. Device and bus names in labels are escaped.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_buses(&mut out);
        self.render_push(&mut out);
        self.render_events(&mut out);
        self.render_process(&mut out);
        self.opcua.render(&mut out);
        self.modbus_server.render(&mut out);
        self.notifiers.render(&mut out);
        self.tls.render(&mut out);
        out
    }

    /// Requests, decode errors, online, request durations and utilisation, per device and bus.
    fn render_buses(&self, out: &mut String) {
        out.push_str("# TYPE edge_modbus_requests_total counter\n");
        for (d, name) in self.device_names.iter().enumerate() {
            for r in RequestResult::ALL {
                let v = self.devices[d].requests[r as usize].load(Relaxed);
                let _ = writeln!(
                    out,
                    "edge_modbus_requests_total{{device=\"{name}\",result=\"{}\"}} {v}",
                    r.as_str()
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
        out.push_str("# TYPE edge_modbus_request_duration_seconds histogram\n");
        for (b, name) in self.bus_names.iter().enumerate() {
            self.buses[b].duration.render(
                out,
                "edge_modbus_request_duration_seconds",
                &format!("bus=\"{name}\""),
            );
        }
        out.push_str("# TYPE edge_bus_utilization_ratio gauge\n");
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        for (b, name) in self.bus_names.iter().enumerate() {
            let busy = self.buses[b].duration.sum_seconds();
            let _ = writeln!(
                out,
                "edge_bus_utilization_ratio{{bus=\"{name}\"}} {:.4}",
                (busy / wall).min(1.0)
            );
        }
        let wires: wire::Wires = self.buses.iter().map(|b| b.wire.clone()).collect();
        wire::render(out, &self.bus_names, &wires);
    }

    /// WebSocket pushes by kind and result, and their durations and latency.
    fn render_push(&self, out: &mut String) {
        out.push_str("# TYPE edge_push_events_dropped_total counter\n");
        for p in Priority::ALL {
            let v = self.push.event_drops[p.rank() as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "edge_push_events_dropped_total{{priority=\"{}\"}} {v}",
                p.as_str()
            );
        }
        out.push_str("# TYPE edge_push_messages_total counter\n");
        for kind in PushKind::ALL {
            for (r, result) in ["sent", "dropped"].iter().enumerate() {
                let v = self.push.messages[kind as usize][r].load(Relaxed);
                let _ = writeln!(
                    out,
                    "edge_push_messages_total{{kind=\"{}\",result=\"{result}\"}} {v}",
                    kind.as_str()
                );
            }
        }
        out.push_str("# TYPE edge_push_duration_seconds histogram\n");
        self.push
            .duration
            .render(out, "edge_push_duration_seconds", "");
        out.push_str("# TYPE edge_push_latency_seconds histogram\n");
        self.push
            .latency
            .render(out, "edge_push_latency_seconds", "");
    }

    /// Samples, events by type and status, suppression, queues and processing time.
    fn render_events(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# TYPE edge_samples_total counter\nedge_samples_total {}",
            self.samples.load(Relaxed)
        );
        out.push_str("# TYPE edge_events_processed_total counter\n");
        for (t, name) in crate::model::event::EventType::ALL.iter().enumerate() {
            for (k, status) in ["committed", "suppressed"].iter().enumerate() {
                let v = self.events.processed[t][k].load(Relaxed);
                let _ = writeln!(
                    out,
                    "edge_events_processed_total{{event_type=\"{}\",status=\"{status}\"}} {v}",
                    name.as_str()
                );
            }
        }
        out.push_str("# TYPE edge_events_suppressed_total counter\n");
        for (d, name) in self.device_names.iter().enumerate() {
            let v = self.events.suppressed[d].load(Relaxed);
            let _ = writeln!(out, "edge_events_suppressed_total{{device=\"{name}\"}} {v}");
        }
        out.push_str("# TYPE edge_event_queue_length gauge\n");
        for p in Priority::ALL {
            let v = self.events.queue[p.rank() as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "edge_event_queue_length{{priority=\"{}\"}} {v}",
                p.as_str()
            );
        }
        out.push_str("# TYPE edge_event_process_duration_seconds histogram\n");
        self.events
            .duration
            .render(out, "edge_event_process_duration_seconds", "");
    }

    /// The store, reloads, the build, and the process's memory, descriptors and uptime.
    fn render_process(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# TYPE edge_store_rows_total counter\nedge_store_rows_total {}",
            self.store_rows.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE edge_store_errors_total counter\nedge_store_errors_total {}",
            self.store_errors.load(Relaxed)
        );
        out.push_str("# TYPE edge_config_reloads_total counter\n");
        for r in Reload::ALL {
            let v = self.reloads[r as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "edge_config_reloads_total{{result=\"{}\"}} {v}",
                r.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# TYPE edge_build_info gauge\nedge_build_info{{version=\"{}\",git=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::build_info::GIT
        );
        let _ = writeln!(
            out,
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n\
             # TYPE process_open_fds gauge\nprocess_open_fds {}\n\
             # TYPE edge_uptime_seconds gauge\nedge_uptime_seconds {:.0}",
            rss_bytes(),
            open_fds(),
            self.started.elapsed().as_secs_f64()
        );
    }
}
