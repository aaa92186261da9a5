//! The pipeline between the buses and the store: bus events → live state (report on change) →
//! rules → store, with reported changes told to its telemetry port (the dashboard's pushes,
//! OPC UA) and rule events handed to the event processor.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::calc::Calculator;
use crate::config::{Config, Priority};
use crate::events::processor::Queues;
use crate::events::rules::Engine;
use crate::events::{Draft, EventState, EventType};
use crate::metrics::Metrics;
use crate::modbus::bus::BusEvent;
use crate::model::{now_ms, Report};
use crate::state::{self, Change, SharedLive, Telemetry};
use crate::store::{StoreCmd, StoreHandle};
use crate::sync::Locked;

/// How often on-delays, `stale` rules and the store's gap notices are looked at.
const TICK: Duration = Duration::from_millis(100);
/// How often points whose polls stopped arriving are marked `stale`.
const STALE_CHECK: Duration = Duration::from_secs(1);

/// What the pipeline reads from and feeds: each a narrow handle, none of the HTTP side.
pub struct Pipeline {
    pub config: Arc<Config>,
    pub live: SharedLive,
    pub metrics: Arc<Metrics>,
    pub store: StoreHandle,
    /// Told of every report as it happens: the WebSocket pushes, the OPC UA server's variables.
    pub telemetry: Vec<Arc<dyn Telemetry>>,
    pub engine: Engine,
    /// Calculated points and `expr` rules, evaluated as their inputs change.
    pub calc: Calculator,
    pub queues: Queues,
    /// Barriers (tests, replay): answered once everything sent before them went through.
    pub settle: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
}

impl Pipeline {
    /// Applies bus events to the live state, runs the rule engine on every sample (and on a
    /// tick for on-delays and staleness), pushes reported changes, and sends what must be
    /// stored. Ends when every bus has stopped (its sender dropped), so nothing polled is lost
    /// at shutdown.
    pub async fn run(mut self, mut rx: mpsc::Receiver<BusEvent>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stale_check = tokio::time::Instant::now();
        let mut drafts = Vec::new();
        loop {
            let beats = &self.metrics.beats;
            beats.beat(&beats.pipeline);
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    if !self.on_bus_event(ev, &mut drafts).await {
                        return;
                    }
                }
                Some(done) = self.settle.recv() => {
                    // Everything the buses sent before the barrier first, then through the
                    // event processor, which answers it.
                    while let Ok(ev) = rx.try_recv() {
                        if !self.on_bus_event(ev, &mut drafts).await {
                            return;
                        }
                        if !self.send_drafts(&mut drafts).await {
                            return;
                        }
                    }
                    self.queues.settle(done).await;
                }
                _ = tick.tick() => {
                    let mut reports = self.on_tick(&mut drafts);
                    if last_stale_check.elapsed() >= STALE_CHECK {
                        last_stale_check = tokio::time::Instant::now();
                        reports.extend(state::mark_stale(&self.config, &self.live, now_ms()));
                    }
                    let now = tokio::time::Instant::now();
                    let mut calculated = Vec::new();
                    for r in &reports {
                        if self.calc.queue(r.device, r.rows.iter().map(|r| r.point)) {
                            calculated.extend(self.calculate(None, now, &mut drafts));
                        }
                    }
                    for r in reports.into_iter().chain(calculated) {
                        if !self.report(r, now).await {
                            return;
                        }
                    }
                }
            }
            if !self.send_drafts(&mut drafts).await {
                return;
            }
        }
    }

    /// Hands the rules' drafts to the event processor; false when it is gone.
    async fn send_drafts(&self, drafts: &mut Vec<Draft>) -> bool {
        for d in drafts.drain(..) {
            if !self.queues.send(d).await {
                tracing::error!("event processor is gone; stopping the pipeline");
                return false;
            }
        }
        true
    }

    /// One sample or status change: rules first (they see the reading as it came), then the
    /// state, the push and the store. False when the store is gone.
    async fn on_bus_event(&mut self, ev: BusEvent, drafts: &mut Vec<Draft>) -> bool {
        let read_at = match &ev {
            BusEvent::Polled {
                device,
                ts,
                at,
                results,
            } => {
                self.engine.on_poll(*device, results, *ts, *at, drafts);
                for (p, r) in results {
                    self.engine.on_sample(*device, *p, r, *ts, *at, drafts);
                }
                self.metrics
                    .samples
                    .fetch_add(results.len() as u64, Relaxed);
                *at
            }
            BusEvent::Status {
                device,
                ts,
                online,
                reason,
                bus_down,
            } => {
                let now = tokio::time::Instant::now();
                self.engine
                    .on_status(*device, *online, reason, *bus_down, *ts, now, drafts);
                now
            }
            BusEvent::Bus {
                bus,
                ts,
                online,
                cause,
            } => {
                let now = tokio::time::Instant::now();
                self.engine.on_bus(*bus, *online, cause, *ts, now, drafts);
                now
            }
        };
        // The formulas the poll's points feed, queued before the results move into the state.
        let queued = match &ev {
            BusEvent::Polled {
                device, results, ..
            } => self.calc.queue(*device, results.iter().map(|r| r.0)),
            _ => false,
        };
        let (mut report, status) = match state::apply(&self.config, &self.live, ev) {
            Some(Change::Report(r)) => (Some(r), None),
            Some(status @ Change::Status { .. }) => (None, Some(status)),
            None => (None, None),
        };
        let calculated = if queued {
            self.calculate(report.as_mut(), read_at, drafts)
        } else {
            Vec::new()
        };
        for r in report.into_iter().chain(calculated) {
            if !self.report(r, read_at).await {
                return false;
            }
        }
        if let Some(Change::Status {
            device,
            online,
            last_seen,
            ts,
        }) = status
        {
            return self
                .store(StoreCmd::Status {
                    device,
                    online,
                    last_seen,
                    ts,
                })
                .await;
        }
        true
    }

    /// The queued formulas evaluated: the rules on their results told, their rows joined to
    /// `report` when of the same device and time (one stored sample), else returned as reports
    /// of their own.
    fn calculate(
        &mut self,
        mut report: Option<&mut Report>,
        at: tokio::time::Instant,
        drafts: &mut Vec<Draft>,
    ) -> Vec<Report> {
        let out = {
            let mut live = state::write(&self.live);
            self.calc.run(&self.config, &mut live)
        };
        for (d, p, v, ts) in out.samples.drain(..) {
            self.engine.on_sample(d, p, &Ok(v), ts, at, drafts);
        }
        for &(r, holds, ts) in &out.rules {
            self.engine.on_expr(r, holds, ts, at, drafts);
        }
        let mut reports: Vec<Report> = Vec::new();
        for row in out.rows.drain(..) {
            let key = (row.device, row.ts);
            let same = |r: &Report| (r.device, r.ts) == key;
            let target = match report.as_deref_mut() {
                Some(r) if same(r) => Some(r),
                _ => reports.iter_mut().find(|r| same(r)),
            };
            if let Some(r) = target {
                r.rows.push(row);
            } else {
                reports.push(Report {
                    device: row.device,
                    ts: row.ts,
                    rows: vec![row],
                });
            }
        }
        reports
    }

    /// A report told to the telemetry port, then stored. False when the store is gone.
    async fn report(&self, report: Report, read_at: tokio::time::Instant) -> bool {
        let read_at = read_at.into_std();
        for t in &self.telemetry {
            t.report(&report, read_at);
        }
        self.store(StoreCmd::Report(report)).await
    }

    /// False when the store is gone.
    async fn store(&self, cmd: StoreCmd) -> bool {
        if !self.store.send(cmd).await {
            tracing::error!("store writer is gone; stopping the pipeline");
            return false;
        }
        true
    }

    /// Timed rules (on-delays, `stale`), and the gaps the store's size cap made. Returns the
    /// reports of points a `stale` rule flagged.
    fn on_tick(&mut self, drafts: &mut Vec<Draft>) -> Vec<Report> {
        let mut reports = Vec::new();
        if self.engine.rule_count() > 0 {
            let now = now_ms();
            let stale = self.engine.tick(now, tokio::time::Instant::now(), drafts);
            reports = state::turn_stale(&self.live, &stale, now);
        }
        self.gap_events(drafts);
        reports
    }

    /// Telemetry the store's size cap dropped before any upstream had it: one
    /// `device_abnormal` info event per device and drop, saying exactly what range was lost.
    fn gap_events(&self, drafts: &mut Vec<Draft>) {
        let gaps = std::mem::take(&mut *self.store.gaps.locked());
        for g in gaps {
            // A device no longer configured has no event stream to carry its gap: logged only.
            let Some(device) = self.config.devices.iter().position(|d| d.id == g.device_id) else {
                continue;
            };
            drafts.push(Draft {
                device,
                point: None,
                kind: EventType::DeviceAbnormal,
                priority: Priority::Normal,
                value: None,
                message: g.message(),
                state: EventState::Info,
                ts: now_ms(),
                alarm: None,
                at: tokio::time::Instant::now(),
            });
        }
    }
}
