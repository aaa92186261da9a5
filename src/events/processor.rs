//! The event processor: takes drafts from three priority queues (emergency first, always),
//! applies storm control per device, numbers them (`seq` gateway-wide, `deviceSeq` per device),
//! commits them with their alarm changes, then pushes them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Draft, Event, EventState, EventType};
use crate::config::Config;
use crate::config::Priority;
use crate::metrics::Metrics;
use crate::model::event::AlarmOp;
use crate::model::now_ms;
use crate::store::{self, StoreCmd, StoreHandle};

/// Capacity of each priority queue.
pub const QUEUE: usize = 1024;
/// Barriers (tests, replay) waiting for the pipeline and then the processor: few are ever in
/// flight; a caller waits.
pub const SETTLE_CAPACITY: usize = 4;
/// Committed batches waiting for the pushes (and OPC UA's events); past it the processor waits:
/// pushing only queues frames, so this hardly ever fills.
pub const COMMITTED_CAPACITY: usize = 64;
/// Most drafts taken into one commit.
const BATCH: usize = 256;

/// The sending side, by priority. Each send counts in `edge_event_queue_length` and each take
/// counts out, so the gauge is current also while the processor waits on the store.
#[derive(Clone)]
pub struct Queues {
    emergency: mpsc::Sender<Draft>,
    high: mpsc::Sender<Draft>,
    normal: mpsc::Sender<Draft>,
    settle: mpsc::Sender<oneshot::Sender<()>>,
    metrics: Arc<Metrics>,
}

/// Operator events (`info` state, normal priority) into the processor; see [`Queues::operator`].
#[derive(Clone)]
pub struct OperatorEvents {
    normal: mpsc::WeakSender<Draft>,
    metrics: Arc<Metrics>,
}

impl OperatorEvents {
    /// Queues an operator's `info` event; `false` once the gateway is stopping.
    pub async fn send(&self, d: Draft) -> bool {
        let Some(q) = self.normal.upgrade() else {
            return false;
        };
        let gauge = &self.metrics.events.queue[Priority::Normal.rank() as usize];
        gauge.fetch_add(1, Relaxed);
        let sent = q.send(d).await.is_ok();
        if !sent {
            gauge.fetch_sub(1, Relaxed);
        }
        sent
    }
}

pub struct Receivers {
    emergency: mpsc::Receiver<Draft>,
    high: mpsc::Receiver<Draft>,
    normal: mpsc::Receiver<Draft>,
    /// Barriers: answered once every draft queued before them is committed (or held, while
    /// the store cannot write).
    settle: mpsc::Receiver<oneshot::Sender<()>>,
}

pub fn queues(metrics: Arc<Metrics>) -> (Queues, Receivers) {
    let (e, er) = mpsc::channel(QUEUE);
    let (h, hr) = mpsc::channel(QUEUE);
    let (n, nr) = mpsc::channel(QUEUE);
    let (s, sr) = mpsc::channel(SETTLE_CAPACITY);
    (
        Queues {
            emergency: e,
            high: h,
            normal: n,
            settle: s,
            metrics,
        },
        Receivers {
            emergency: er,
            high: hr,
            normal: nr,
            settle: sr,
        },
    )
}

impl Queues {
    /// Queues a draft by its priority; waits when that queue is full (backpressure).
    pub async fn send(&self, d: Draft) -> bool {
        let rank = d.priority.rank() as usize;
        let q = match d.priority {
            Priority::Emergency => &self.emergency,
            Priority::High => &self.high,
            Priority::Normal => &self.normal,
        };
        let gauge = &self.metrics.events.queue[rank];
        gauge.fetch_add(1, Relaxed);
        let sent = q.send(d).await.is_ok();
        if !sent {
            gauge.fetch_sub(1, Relaxed);
        }
        sent
    }

    /// A way in for operator events (acknowledgements) that does not keep the processor alive:
    /// it ends at shutdown once the pipeline's own senders are dropped.
    pub fn operator(&self) -> OperatorEvents {
        OperatorEvents {
            normal: self.normal.downgrade(),
            metrics: self.metrics.clone(),
        }
    }

    /// A barrier behind every draft queued so far: `done` is answered once they are committed.
    pub async fn settle(&self, done: oneshot::Sender<()>) {
        let _ = self.settle.send(done).await;
    }
}

/// Per-device storm control: at most `max` events per wall-clock second; the excess is counted
/// and summarised once the storm is over.
#[derive(Default, Clone)]
struct Storm {
    second: i64,
    count: u32,
    suppressed: u64,
}

/// Events held while the store cannot write, at most.
const MAX_UNSTORED: usize = 10_000;

pub struct Processor {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    store: StoreHandle,
    /// Each batch of events, once committed (for the WebSocket pushes).
    committed: mpsc::Sender<Vec<Event>>,
    next_seq: u64,
    /// The numbers written down as reserved before they are used (`store::seq`).
    reserved: store::seq::Reserved,
    device_seq: Vec<u64>,
    /// Numbered events the store has not taken yet (it could not write), oldest first.
    unstored: Vec<Event>,
    storms: Vec<Storm>,
}

impl Processor {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: StoreHandle,
        committed: mpsc::Sender<Vec<Event>>,
        last_seq: u64,
        device_seq: Vec<u64>,
    ) -> Processor {
        let n = config.sources();
        let reserved = store::seq::Reserved::new(&config.gateway.data_dir);
        Processor {
            config,
            metrics,
            store,
            committed,
            next_seq: last_seq + 1,
            reserved,
            device_seq,
            unstored: Vec::new(),
            storms: vec![Storm::default(); n],
        }
    }

    fn summary(&mut self, device: usize, ts: i64) -> Option<Event> {
        let n = std::mem::take(&mut self.storms[device].suppressed);
        (n > 0).then(|| {
            let max = self.config.events.max_per_device_per_s;
            self.number(Draft {
                device,
                point: None,
                kind: EventType::DeviceAbnormal,
                priority: Priority::Normal,
                value: None,
                message: format!(
                    "{n} events suppressed by storm control (more than {max} per second)"
                ),
                state: EventState::Info,
                ts,
                alarm: None,
                at: tokio::time::Instant::now(),
            })
        })
    }

    fn number(&mut self, d: Draft) -> Event {
        let seq = self.next_seq;
        self.reserved.cover(seq);
        self.next_seq += 1;
        self.device_seq[d.device] += 1;
        // The record of an acknowledgement says who made it and when.
        let (acked_by, acked_at) = match &d.alarm {
            Some(AlarmOp::Acked { by, .. }) => (Some(by.clone()), Some(d.ts)),
            _ => (None, None),
        };
        Event {
            seq,
            device: d.device,
            point: d.point,
            kind: d.kind,
            priority: d.priority,
            device_seq: self.device_seq[d.device],
            value: d.value,
            message: d.message,
            state: d.state,
            ts: d.ts,
            alarm: d.alarm,
            acked_by,
            acked_at,
            at: d.at,
        }
    }

    /// Storm control, then numbering, in the order drafts were taken (so each device's
    /// `deviceSeq` follows the order its events reach every sink).
    fn admit(&mut self, drafts: Vec<Draft>, out: &mut Vec<Event>) {
        let max = self.config.events.max_per_device_per_s;
        for d in drafts {
            let second = d.ts.div_euclid(1000);
            if self.storms[d.device].second != second {
                if let Some(s) = self.summary(d.device, d.ts) {
                    out.push(s);
                }
                let st = &mut self.storms[d.device];
                st.second = second;
                st.count = 0;
            }
            // Emergencies are never suppressed, and do not use up the budget of the others; nor
            // are an operator's records (an acknowledgement of 30 alarms at once is 30 records,
            // each of which must reach the log and the alarm's upstream row).
            let operator = matches!(d.alarm, Some(AlarmOp::Acked { .. }))
                || matches!(
                    d.kind,
                    EventType::ConfigApplied | EventType::AlarmShelved | EventType::AlarmUnshelved
                );
            if d.priority == Priority::Emergency || operator {
                out.push(self.number(d));
                continue;
            }
            let st = &mut self.storms[d.device];
            if st.count >= max {
                st.suppressed += 1;
                let m = &self.metrics.events;
                if let Some(c) = m.suppressed.get(d.device) {
                    c.fetch_add(1, Relaxed);
                }
                m.processed[type_index(d.kind)][1].fetch_add(1, Relaxed);
                continue;
            }
            st.count += 1;
            out.push(self.number(d));
        }
    }

    /// Summaries for storms that ended with no event after them.
    fn quiet_storms(&mut self, out: &mut Vec<Event>) {
        let now = now_ms();
        for device in 0..self.storms.len() {
            if self.storms[device].suppressed > 0
                && self.storms[device].second < now.div_euclid(1000)
            {
                if let Some(s) = self.summary(device, now) {
                    out.push(s);
                }
            }
        }
    }

    /// Commits, then pushes: an event is pushed only once it is in the store. Events the
    /// store could not take (disk full) are kept, numbered, and go first in the next commit,
    /// so nobody sees an event that a restart could forget or give another's number to.
    /// Returns false when the store is gone.
    async fn commit(&mut self, events: Vec<Event>, started: &[tokio::time::Instant]) -> bool {
        if events.is_empty() && self.unstored.is_empty() {
            return true;
        }
        let mut events = events;
        if !self.unstored.is_empty() {
            events.splice(0..0, std::mem::take(&mut self.unstored));
        }
        let (done, committed) = oneshot::channel();
        if !self
            .store
            .send(StoreCmd::Events {
                events: events.clone(),
                done,
            })
            .await
        {
            tracing::error!(
                "store writer is gone: {} events not committed",
                events.len()
            );
            return false;
        }
        match committed.await {
            Ok(true) => {}
            Ok(false) => {
                let n = events.len();
                if n > MAX_UNSTORED {
                    // Memory is a budget too: the oldest go, and say so.
                    events.drain(..n - MAX_UNSTORED);
                    tracing::error!(
                        "store cannot write: {} events dropped, the newest {MAX_UNSTORED} kept",
                        n - MAX_UNSTORED
                    );
                }
                if self.unstored.is_empty() {
                    tracing::warn!("store cannot write: {n} events held until it can, not pushed");
                }
                self.unstored = events;
                return true;
            }
            Err(_) => {
                tracing::error!(
                    "store writer is gone: {} events not committed",
                    events.len()
                );
                return false;
            }
        }
        let m = &self.metrics.events;
        for e in &events {
            m.processed[type_index(e.kind)][0].fetch_add(1, Relaxed);
        }
        for s in started {
            m.duration.observe(s.elapsed());
        }
        // Pushed only once stored; a receiver gone (at shutdown) is no error of ours.
        if !events.is_empty() {
            let _ = self.committed.send(events).await;
        }
        true
    }

    pub async fn run(mut self, rx: Receivers) {
        self.serve(rx).await;
        self.reserved.close(self.next_seq);
    }

    async fn serve(&mut self, mut rx: Receivers) {
        let mut open = [true; 3];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while open.iter().any(|o| *o) {
            let first = tokio::select! {
                biased;
                d = rx.emergency.recv(), if open[0] => d.or_else(|| { open[0] = false; None }),
                d = rx.high.recv(), if open[1] => d.or_else(|| { open[1] = false; None }),
                d = rx.normal.recv(), if open[2] => d.or_else(|| { open[2] = false; None }),
                // Last in the bias: only when no draft is waiting, so all before it are done.
                Some(done) = rx.settle.recv() => {
                    let _ = done.send(());
                    continue;
                }
                _ = tick.tick() => {
                    let mut out = Vec::new();
                    self.quiet_storms(&mut out);
                    if !self.commit(out, &[]).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(first) = first else { continue };
            let m = &self.metrics.events;
            m.queue[first.priority.rank() as usize].fetch_sub(1, Relaxed);
            let mut drafts = vec![first];
            // Fill the batch, emergency first, then high, then normal.
            while drafts.len() < BATCH {
                let next = rx
                    .emergency
                    .try_recv()
                    .or_else(|_| rx.high.try_recv())
                    .or_else(|_| rx.normal.try_recv());
                match next {
                    Ok(d) => {
                        m.queue[d.priority.rank() as usize].fetch_sub(1, Relaxed);
                        drafts.push(d);
                    }
                    Err(_) => break,
                }
            }
            let started: Vec<_> = drafts.iter().map(|d| d.at).collect();
            let mut events = Vec::with_capacity(drafts.len());
            self.admit(drafts, &mut events);
            if !self.commit(events, &started).await {
                return;
            }
        }
        // Storms still open at shutdown are summarised too: nothing vanishes silently.
        let mut out = Vec::new();
        for device in 0..self.storms.len() {
            if let Some(s) = self.summary(device, now_ms()) {
                out.push(s);
            }
        }
        self.commit(out, &[]).await;
    }
}

fn type_index(t: EventType) -> usize {
    EventType::ALL.iter().position(|x| *x == t).unwrap_or(0)
}
