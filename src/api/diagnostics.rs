//! What `system.diagnostics` reports — per bus its link and the last 5 minutes' requests, per
//! device its last good read and last error, the sinks, the store against its cap, the gateway
//! itself — and the sampler that keeps the 5-minute windows.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

use crate::api::Shared;
use crate::config::Link;
use crate::metrics::{Metrics, RequestResult, Sample};
use crate::model::rfc3339;
use crate::state;
use crate::sync::Locked;

/// How often the request counters are kept for the windows.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// The window the diagnostics count over (shorter just after a start or reload).
const WINDOW: Duration = Duration::from_secs(300);

/// Keeps a [`Sample`] of the counters every [`SAMPLE_EVERY`] until cancelled.
pub async fn sampler(metrics: Arc<Metrics>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => metrics.keep_sample(),
        }
    }
}

/// Requests by result over the window, as JSON.
fn by_result(now: &[u64; 4], then: &[u64; 4]) -> (Json, u64) {
    let mut j = serde_json::Map::new();
    let mut total = 0;
    for r in RequestResult::ALL {
        let n = now[r as usize].saturating_sub(then[r as usize]);
        total += n;
        j.insert(r.as_str().into(), n.into());
    }
    (Json::Object(j), total)
}

/// The sample the window starts at: the newest one at least 5 minutes old, else the oldest.
fn window_start(m: &Metrics, now: &Sample) -> Sample {
    let w = m.windows.locked();
    let cutoff = now.at.checked_sub(WINDOW);
    w.iter()
        .rev()
        .find(|s| cutoff.is_some_and(|c| s.at <= c))
        .or_else(|| w.front())
        .cloned()
        .unwrap_or_else(|| Sample {
            at: now.at,
            requests: vec![[0; 4]; now.requests.len()],
            busy_s: vec![0.0; now.busy_s.len()],
            wire_bytes: vec![0; now.wire_bytes.len()],
        })
}

fn link_text(link: &Link) -> (&'static str, String) {
    match link {
        Link::Tcp { address } => ("tcp", address.clone()),
        Link::RtuOverTcp { address } => ("rtu_over_tcp", address.clone()),
        Link::Rtu { port, baud, .. } => ("rtu", format!("{port} @{baud}")),
    }
}

/// The counters now and at the window's start, with the window's length in seconds.
struct Window {
    now: Sample,
    then: Sample,
    seconds: f64,
}

/// The report; `admin` adds the links' addresses and the sinks' error texts.
pub fn report(s: &Shared, admin: bool) -> Json {
    let now = s.metrics.sample();
    let then = window_start(&s.metrics, &now);
    let seconds = now.at.duration_since(then.at).as_secs_f64();
    let w = Window { now, then, seconds };
    let (db, wal) = crate::store::file_sizes(&s.config.gateway.data_dir);
    json!({
        "windowS": w.seconds.round(),
        "buses": buses(s, &w, admin),
        "devices": devices(s, &w),
        "sinks": sinks(s, admin),
        "notifiers": notifiers(s, admin),
        "opcua": opcua(s, admin),
        "modbusServer": modbus_server(s),
        "store": {
            "dbBytes": db,
            "walBytes": wal,
            "capBytes": s.config.store.max_db_mb * 1024 * 1024,
            "healthy": s.store.healthy.load(Relaxed),
        },
        "gateway": {
            "id": s.config.gateway.id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeS": s.started.elapsed().as_secs(),
            "clockSynchronised": crate::clock::synchronised(),
        },
    })
}

fn devices(s: &Shared, w: &Window) -> Vec<Json> {
    let live = state::read(&s.live);
    s.config
        .devices
        .iter()
        .enumerate()
        .map(|(d, dev)| {
            let (requests, _) = by_result(&w.now.requests[d], &w.then.requests[d]);
            let last_error = s.metrics.devices[d].last_error.locked().clone();
            json!({
                "id": dev.id,
                "bus": s.config.buses[dev.bus].name,
                "unit": dev.unit,
                "online": live.devices[d].online,
                "lastGoodRead": live.devices[d].last_seen.map(rfc3339),
                "lastError": last_error.map(|(at, message)| json!({ "at": rfc3339(at), "message": message })),
                "requests": requests,
            })
        })
        .collect()
}

fn buses(s: &Shared, w: &Window, admin: bool) -> Vec<Json> {
    s.config
        .buses
        .iter()
        .enumerate()
        .map(|(b, bus)| {
            let (mut sum, mut was) = ([0u64; 4], [0u64; 4]);
            for (d, _) in s
                .config
                .devices
                .iter()
                .enumerate()
                .filter(|(_, x)| x.bus == b)
            {
                for i in 0..4 {
                    sum[i] += w.now.requests[d][i];
                    was[i] += w.then.requests[d][i];
                }
            }
            let (requests, total) = by_result(&sum, &was);
            let busy = w.now.busy_s[b] - w.then.busy_s[b];
            let (utilisation, per_s) = if w.seconds > 0.0 {
                ((busy / w.seconds).min(1.0), total as f64 / w.seconds)
            } else {
                (0.0, 0.0)
            };
            let down = s.metrics.buses[b].down.locked().clone();
            let wire = s.metrics.buses[b].wire.get().map_or(Json::Null, |wire| {
                // Over the window, as the request figures beside it (a wire that started
                // counting within it counts from its start).
                let bytes = w.now.wire_bytes[b].saturating_sub(w.then.wire_bytes[b]);
                let seconds = w.seconds.min(wire.since.elapsed().as_secs_f64());
                json!({
                    "bytesSent": wire.sent.load(Relaxed),
                    "bytesReceived": wire.received.load(Relaxed),
                    "crcErrors": wire.crc_errors.load(Relaxed),
                    "frameGaps": wire.frame_gaps.load(Relaxed),
                    "lateAnswers": wire.late.load(Relaxed),
                    "utilisation": wire.utilisation_over(bytes, seconds),
                })
            });
            let (kind, at) = link_text(&bus.link);
            let mut j = json!({
                "name": bus.name,
                "kind": kind,
                "link": if down.is_some() { "down" } else { "up" },
                "cause": down,
                "utilisation": utilisation,
                "requestsPerS": per_s,
                "requests": requests,
                "wire": wire,
            });
            if admin {
                j["at"] = at.into();
            }
            j
        })
        .collect()
}

fn sinks(s: &Shared, admin: bool) -> Vec<Json> {
    s.sinks
        .configured(&s.config)
        .into_iter()
        .map(|(name, st)| {
            let error = st.error();
            let mut j = json!({
                "name": name,
                "connected": error.is_none(),
                "backlog": st.backlog.load(Relaxed),
            });
            if admin {
                j["lastError"] = error.into();
            }
            j
        })
        .collect()
}

/// Each notifier: kind, backlog, messages by result, the last success and (admins) last error.
fn notifiers(s: &Shared, admin: bool) -> Vec<Json> {
    use crate::metrics::notify::Result as R;
    s.config
        .notifiers
        .iter()
        .map(|n| {
            let st = s.metrics.notifiers.status(&n.name);
            let last_error = st.last_error.locked().clone();
            let mut j = json!({
                "name": n.name,
                "kind": n.kind_name(),
                "backlog": st.backlog.load(Relaxed),
                "sent": st.counted(R::Ok),
                "failed": st.counted(R::Failed),
                "shelved": st.counted(R::Shelved),
                "lastSuccess": st.last_ok.locked().map(rfc3339),
                "lastErrorAt": last_error.as_ref().map(|(t, _)| rfc3339(*t)),
            });
            if admin {
                j["lastError"] = last_error.map(|(_, e)| e).into();
            }
            j
        })
        .collect()
}

/// The OPC UA server's open sessions (`null` while it is off); the clients' application URIs
/// for admins only, as the links' addresses are.
fn opcua(s: &Shared, admin: bool) -> Json {
    let o = &s.metrics.opcua;
    if !o.enabled.load(Relaxed) {
        return Json::Null;
    }
    let sessions: Vec<Json> = o
        .session_rows
        .locked()
        .iter()
        .map(|r| {
            let mut j = json!({
                "user": r.user,
                "security": r.security,
                "monitoredItems": r.monitored_items,
            });
            if admin {
                j["client"] = r.client.clone().into();
            }
            j
        })
        .collect();
    json!({ "sessions": sessions })
}

/// The Modbus TCP server's connections and requests per unit (`null` while it is off).
fn modbus_server(s: &Shared) -> Json {
    let m = &s.metrics.modbus_server;
    let c = &s.config.modbus_server;
    if !m.enabled.load(Relaxed) {
        return Json::Null;
    }
    let counts = m.per_unit();
    let units: Vec<Json> = c
        .units
        .iter()
        .map(|u| {
            let (requests, exceptions) = counts.get(&u.unit).copied().unwrap_or_default();
            json!({
                "unit": u.unit,
                "device": s.config.devices[u.device].id,
                "layout": match u.layout {
                    crate::config::Layout::Mirror => "mirror",
                    crate::config::Layout::Float32 => "float32",
                },
                "requests": requests,
                "exceptions": exceptions,
            })
        })
        .collect();
    json!({
        "listen": c.listen.to_string(),
        "connections": m.connections.load(Relaxed),
        "maxConnections": c.max_connections,
        "refused": m.refused_not_allowed.load(Relaxed) + m.refused_full.load(Relaxed),
        "closedGarbage": m.closed_garbage.load(Relaxed),
        "units": units,
    })
}
