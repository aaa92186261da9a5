//! The live state of every device and point, and the report-on-change decision (deadband and
//! `report_every_s`) that turns polls into history rows for the store.

use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::config::{Config, Point};
use crate::modbus::bus::BusEvent;
use crate::model::{Millis, Quality, Value};
use crate::store::{Restored, Row, StoreCmd};

#[derive(Debug, Clone, PartialEq)]
pub struct PointLive {
    /// The last value read; kept (with quality `bad`) when a later read fails, so a technician
    /// still sees what the device last said.
    pub value: Option<Value>,
    pub quality: Quality,
    pub ts: Millis,
    /// Why the last read gave no value.
    pub error: Option<String>,
    /// What was last written to history, and when.
    reported: Option<(Option<Value>, Quality, Millis)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLive {
    pub online: bool,
    pub last_seen: Option<Millis>,
    pub points: Vec<PointLive>,
}

#[derive(Debug, Clone, Default)]
pub struct Live {
    pub devices: Vec<DeviceLive>,
}

pub type SharedLive = Arc<RwLock<Live>>;

impl Live {
    /// The state a (re)start begins with: what the store remembers, every value `stale` until
    /// it is polled again.
    pub fn restored(config: &Config, restored: &Restored) -> Live {
        let devices = config
            .devices
            .iter()
            .enumerate()
            .map(|(d, dev)| DeviceLive {
                online: false,
                last_seen: restored.devices.get(d).and_then(|x| x.1),
                points: dev
                    .points
                    .iter()
                    .enumerate()
                    .map(|(p, _)| {
                        let old = restored
                            .points
                            .get(d)
                            .and_then(|v| v.get(p))
                            .cloned()
                            .flatten();
                        PointLive {
                            value: old.as_ref().and_then(|(v, _)| v.clone()),
                            quality: Quality::Stale,
                            ts: old.as_ref().map(|(_, ts)| *ts).unwrap_or(0),
                            error: None,
                            reported: None,
                        }
                    })
                    .collect(),
            })
            .collect();
        Live { devices }
    }

    pub fn online_count(&self) -> usize {
        self.devices.iter().filter(|d| d.online).count()
    }
}

/// Reads the lock even if a panicking thread poisoned it: the data is plain values.
pub fn read(live: &SharedLive) -> std::sync::RwLockReadGuard<'_, Live> {
    live.read().unwrap_or_else(|e| e.into_inner())
}

fn write(live: &SharedLive) -> std::sync::RwLockWriteGuard<'_, Live> {
    live.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether a new reading must go to history: a change of quality, a move past the deadband,
/// or `report_every` elapsed since the last report.
fn must_report(point: &Point, p: &PointLive, ts: Millis) -> bool {
    let Some((old_value, old_quality, old_ts)) = &p.reported else {
        return true;
    };
    if *old_quality != p.quality || ts - old_ts >= point.report_every.as_millis() as i64 {
        return true;
    }
    match (old_value, &p.value) {
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if point.deadband > 0.0 => (x - y).abs() > point.deadband,
            _ => a != b,
        },
        (None, None) => false,
        _ => true,
    }
}

/// The pipeline between the buses and the store: applies bus events to the live state, runs
/// the rule engine on every sample (and on a 100 ms tick for on-delays and staleness), pushes
/// reported changes to WebSocket subscribers, and sends what must be stored. Ends when every
/// bus has stopped (its sender dropped), so nothing polled is lost at shutdown.
pub async fn run(
    shared: Arc<crate::Shared>,
    mut rx: mpsc::Receiver<BusEvent>,
    mut engine: crate::events::rules::Engine,
    queues: crate::events::processor::Queues,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_stale_check = tokio::time::Instant::now();
    let mut drafts = Vec::new();
    let beats = &shared.metrics.beats;
    loop {
        beats.beat(&beats.pipeline);
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let read_at = match &ev {
                    BusEvent::Polled { device, ts, at, results } => {
                        for (p, r) in results {
                            engine.on_sample(*device, *p, r, *ts, *at, &mut drafts);
                        }
                        shared.metrics.samples.fetch_add(results.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        *at
                    }
                    BusEvent::Status { device, ts, online, reason } => {
                        let now = tokio::time::Instant::now();
                        engine.on_status(*device, *online, reason, *ts, now, &mut drafts);
                        now
                    }
                };
                let cmd = apply(&shared.config, &shared.live, ev);
                if let Some(StoreCmd::Report { device, ts, rows }) = &cmd {
                    crate::ws::push_telemetry(&shared, *device, *ts, rows, read_at.into_std());
                }
                if let Some(cmd) = cmd {
                    if !shared.store.send(cmd).await {
                        tracing::error!("store writer is gone; stopping the pipeline");
                        return;
                    }
                }
            }
            _ = tick.tick() => {
                if engine.rule_count() > 0 {
                    let stale = engine.tick(crate::model::now_ms(), tokio::time::Instant::now(), &mut drafts);
                    if !stale.is_empty() {
                        let mut live = write(&shared.live);
                        for (d, p) in stale {
                            live.devices[d].points[p].quality = Quality::Stale;
                        }
                    }
                }
                gap_events(&shared, &mut drafts);
                if last_stale_check.elapsed() >= std::time::Duration::from_secs(1) {
                    last_stale_check = tokio::time::Instant::now();
                    mark_stale(&shared.config, &shared.live, crate::model::now_ms());
                }
            }
        }
        for d in drafts.drain(..) {
            if !queues.send(d).await {
                tracing::error!("event processor is gone; stopping the pipeline");
                return;
            }
        }
    }
}

/// SPEC: a point not refreshed within 3 × its device's poll interval (at least 3 s) is
/// `stale` by itself, with no rule: its polls stopped arriving (a stalled bus, a slave that
/// answers too slowly). Only `good` values turn stale (a failed read is `bad` already), and
/// the next good read makes them good again. Checked once a second; the write lock is taken
/// only when something turns stale.
pub fn mark_stale(config: &Config, live: &SharedLive, now: Millis) {
    let limit = |d: usize| (config.devices[d].poll_interval.as_millis() as i64 * 3).max(3000);
    let due = |l: &Live| {
        l.devices.iter().enumerate().any(|(d, dev)| {
            dev.points
                .iter()
                .any(|p| p.quality == Quality::Good && now - p.ts > limit(d))
        })
    };
    if !due(&read(live)) {
        return;
    }
    let mut l = write(live);
    for (d, dev) in l.devices.iter_mut().enumerate() {
        let limit = limit(d);
        for p in dev.points.iter_mut() {
            if p.quality == Quality::Good && now - p.ts > limit {
                p.quality = Quality::Stale;
            }
        }
    }
}

/// Telemetry the store's size cap dropped before any upstream had it: one `device_abnormal`
/// info event per device and drop, saying exactly what range was lost.
fn gap_events(shared: &crate::Shared, drafts: &mut Vec<crate::events::Draft>) {
    use crate::events::{Draft, EventState, EventType};
    let gaps = std::mem::take(&mut *shared.store.gaps.lock().unwrap_or_else(|e| e.into_inner()));
    for g in gaps {
        // A device no longer configured has no event stream to carry its gap: logged only.
        let Some(device) = shared
            .config
            .devices
            .iter()
            .position(|d| d.id == g.device_id)
        else {
            continue;
        };
        drafts.push(Draft {
            device,
            point: None,
            kind: EventType::DeviceAbnormal,
            priority: crate::config::Priority::Normal,
            value: None,
            message: g.message(),
            state: EventState::Info,
            ts: crate::model::now_ms(),
            alarm: None,
            at: tokio::time::Instant::now(),
        });
    }
}

/// One bus event → the state change, and the store command it calls for.
pub fn apply(config: &Config, live: &SharedLive, ev: BusEvent) -> Option<StoreCmd> {
    match ev {
        BusEvent::Polled {
            device,
            ts,
            results,
            ..
        } => {
            let dev = &config.devices[device];
            let mut rows = Vec::new();
            let mut guard = write(live);
            let d = &mut guard.devices[device];
            let mut any_good = false;
            for (p, r) in results {
                let point = &dev.points[p];
                let pl = &mut d.points[p];
                match r {
                    Ok(v) => {
                        any_good = true;
                        pl.value = Some(v);
                        pl.quality = Quality::Good;
                        pl.error = None;
                    }
                    Err(e) => {
                        pl.quality = Quality::Bad;
                        pl.error = Some(e.to_string());
                    }
                }
                pl.ts = ts;
                if must_report(point, pl, ts) {
                    pl.reported = Some((pl.value.clone(), pl.quality, ts));
                    rows.push(Row {
                        device,
                        point: p,
                        ts,
                        value: pl.value.clone(),
                        quality: pl.quality,
                    });
                }
            }
            if any_good {
                d.last_seen = Some(ts);
            }
            (!rows.is_empty()).then_some(StoreCmd::Report { device, ts, rows })
        }
        BusEvent::Status {
            device, ts, online, ..
        } => {
            let mut guard = write(live);
            let d = &mut guard.devices[device];
            d.online = online;
            if online {
                d.last_seen = Some(ts);
            }
            Some(StoreCmd::Status {
                device,
                online,
                last_seen: d.last_seen,
                ts,
            })
        }
    }
}
