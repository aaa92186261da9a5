//! One connection's outbound side: its bounded queue with the overflow policy (an urgent push
//! never the one dropped), drop episodes, adaptive snapshot pacing, and the batch of normal
//! events for `batchMs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::config::{Overflow, Priority, Role};
use crate::metrics::{Metrics, PushKind};
use crate::sync::Locked;

/// One queued push: the encoded frame (shared, never copied per client), its kind, and when
/// the data in it was read, for the latency histogram.
#[derive(Clone)]
pub struct Push {
    pub frame: Utf8Bytes,
    pub kind: PushKind,
    pub since: Instant,
    /// A high or emergency event, or a session notice: never dropped to make room (SPEC); when
    /// it cannot be queued, the client is closed (1008) instead of silently missing it.
    pub urgent: bool,
    /// An event's priority, for the drop counters.
    pub priority: Option<Priority>,
}

/// Who is logged in on a connection.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub role: Role,
    pub token: String,
}

/// Normal events waiting to go out together as one `push.events`.
#[derive(Default)]
struct Batch {
    /// Each event's SPEC JSON, in order.
    events: Vec<Utf8Bytes>,
    /// When the oldest was read, for the latency histogram.
    since: Option<Instant>,
    /// When the batch goes out.
    due: Option<tokio::time::Instant>,
}

/// The most events one `push.events` frame carries: a storm is sent in several.
const MAX_BATCH_EVENTS: usize = 500;

/// One connection's outbound side.
pub struct Client {
    pub id: u64,
    queue: Mutex<VecDeque<Push>>,
    capacity: usize,
    overflow: Overflow,
    /// Wakes the writer task when the queue gains an entry or the client must close.
    pub notify: Notify,
    /// Cancelled when the `disconnect` policy fired: also interrupts a send blocked on a
    /// client that stopped reading.
    pub kicked: CancellationToken,
    pub login: Mutex<Option<Login>>,
    /// Where it connected from, and when (ms since the epoch), for `system.stats`.
    pub remote: Option<std::net::SocketAddr>,
    pub connected_at: crate::model::Millis,
    /// Pushes handed to its socket, and dropped, since it connected.
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    /// Drops in the current episode: the first is logged, the count when it caught up.
    dropping: AtomicU64,
    /// Adaptive snapshots: this client gets every `snapshot_factor`-th snapshot (1, 2, 4, 8),
    /// counted in `snapshot_ticks`; `slow_write` says a write took longer than the period.
    snapshot_factor: AtomicU32,
    snapshot_ticks: AtomicU32,
    pub slow_write: AtomicBool,
    /// `subscribe`'s `batchMs` (0: off), and the events waiting for it.
    pub(super) batch_ms: AtomicU32,
    batch: Mutex<Batch>,
}

/// The most a slow client's snapshot period grows, as a multiple of the configured one.
pub const MAX_SNAPSHOT_FACTOR: u32 = 8;

impl Client {
    pub fn new(id: u64, capacity: usize, overflow: Overflow) -> Client {
        Client {
            id,
            // Grown on demand: a reading client's queue rarely holds more than one push, and
            // reserving the whole capacity up front cost 5.6 KB a client at the default of 100.
            queue: Mutex::new(VecDeque::new()),
            capacity,
            overflow,
            notify: Notify::new(),
            kicked: CancellationToken::new(),
            login: Mutex::new(None),
            remote: None,
            connected_at: crate::model::now_ms(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropping: AtomicU64::new(0),
            snapshot_factor: AtomicU32::new(1),
            snapshot_ticks: AtomicU32::new(0),
            slow_write: AtomicBool::new(false),
            batch_ms: AtomicU32::new(0),
            batch: Mutex::default(),
        }
    }

    /// A normal event for a client that batches: waits for the others of its period. The
    /// first of a batch wakes the writer, which arms the timer ([`Client::batch_due`]).
    pub(super) fn batch_event(&self, data: &Utf8Bytes, since: Instant, metrics: &Metrics) {
        let mut b = self.batch.locked();
        b.events.push(data.clone());
        b.since.get_or_insert(since);
        let full = b.events.len() >= MAX_BATCH_EVENTS;
        if b.due.is_none() {
            let ms = u64::from(self.batch_ms.load(Relaxed));
            b.due = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(ms));
            drop(b);
            self.notify.notify_one();
        } else {
            drop(b);
        }
        if full {
            self.flush_batch(metrics);
        }
    }

    /// When the waiting batch is due, if there is one.
    pub fn batch_due(&self) -> Option<tokio::time::Instant> {
        self.batch.locked().due
    }

    /// Queues the waiting events as one `push.events` frame, in order.
    pub fn flush_batch(&self, metrics: &Metrics) {
        let b = std::mem::take(&mut *self.batch.locked());
        let Some(since) = b.since else { return };
        let len: usize = b.events.iter().map(|e| e.len() + 1).sum();
        let mut frame = String::with_capacity(len + 48);
        frame.push_str(r#"{"service":"push.events","data":{"events":["#);
        for (i, e) in b.events.iter().enumerate() {
            if i > 0 {
                frame.push(',');
            }
            frame.push_str(e.as_str());
        }
        frame.push_str("]}}");
        let push = Push {
            frame: Utf8Bytes::from(frame),
            kind: PushKind::Event,
            since,
            urgent: false,
            priority: Some(Priority::Normal),
        };
        self.offer(push, metrics);
    }

    /// The multiple of the configured snapshot period this client gets now.
    pub fn snapshot_factor(&self) -> u32 {
        self.snapshot_factor.load(Relaxed)
    }

    /// At each snapshot tick: whether this client gets this one. A queue over half full, or a
    /// write slower than the period, doubles its period (up to [`MAX_SNAPSHOT_FACTOR`]); an
    /// empty queue halves it again. Events and telemetry are never held back by this.
    pub(super) fn wants_snapshot(&self) -> bool {
        let mut f = self.snapshot_factor.load(Relaxed);
        let queued = self.queued();
        if queued * 2 > self.capacity || self.slow_write.swap(false, Relaxed) {
            f = (f * 2).min(MAX_SNAPSHOT_FACTOR);
        } else if queued == 0 && f > 1 {
            f /= 2;
        }
        self.snapshot_factor.store(f, Relaxed);
        let tick = self.snapshot_ticks.fetch_add(1, Relaxed).wrapping_add(1);
        tick.is_multiple_of(f)
    }

    /// The same, connected from `remote`.
    #[must_use]
    pub fn connected_from(mut self, remote: std::net::SocketAddr) -> Client {
        self.remote = Some(remote);
        self
    }

    pub fn login(&self) -> Option<Login> {
        self.login.locked().clone()
    }

    /// Counts a push this client lost, and logs the first of an episode (who, what).
    fn lost(&self, push: &Push, metrics: &Metrics) {
        metrics.push.dropped(push.kind);
        if let Some(p) = push.priority {
            metrics.push.dropped_event(p);
        }
        self.dropped.fetch_add(1, Relaxed);
        if self.dropping.fetch_add(1, Relaxed) == 0 {
            let user = self.login().map(|l| l.user);
            tracing::warn!(
                client = self.id,
                user = user.as_deref().unwrap_or("-"),
                remote = ?self.remote,
                "client too slow: dropping pushes (first: {}); its queue holds {}",
                push.kind.as_str(),
                self.capacity
            );
        }
    }

    /// The writer emptied the queue onto the socket: an episode of drops, if any, is over.
    pub fn caught_up(&self) {
        let n = self.dropping.swap(0, Relaxed);
        if n > 0 {
            tracing::info!(
                client = self.id,
                "client caught up after dropping {n} pushes"
            );
        }
    }

    /// Queues a push by the client's overflow policy; never waits. Returns whether it was queued.
    /// Whatever the policy, an urgent push (a high or emergency event) is never the one dropped:
    /// the lowest queued push that is not urgent makes room for it (snapshots, then telemetry,
    /// then normal events), and when every queued push is urgent the client is closed rather
    /// than left without it.
    pub fn offer(&self, push: Push, metrics: &Metrics) -> bool {
        let mut q = self.queue.locked();
        if q.len() >= self.capacity {
            let evict_for_urgent = push.urgent && self.overflow != Overflow::Disconnect;
            match self.overflow {
                Overflow::DropNew if !evict_for_urgent => {
                    drop(q);
                    self.lost(&push, metrics);
                    return false;
                }
                Overflow::Disconnect => {
                    drop(q);
                    self.lost(&push, metrics);
                    self.kick();
                    return false;
                }
                Overflow::DropNew | Overflow::DropOldest => {
                    // The lowest that is there goes first: snapshots (the next one replaces
                    // them), then telemetry, then normal events; the oldest of its kind.
                    let rank = |p: &Push| if p.urgent { 3 } else { p.kind as usize };
                    let victim = (0..3).find_map(|r| q.iter().position(|p| rank(p) == r));
                    if let Some(i) = victim {
                        if let Some(old) = q.remove(i) {
                            self.lost(&old, metrics);
                        }
                    } else {
                        // Full of urgent pushes and one more urgent: the client cannot keep up
                        // with what it must not miss, so it goes and re-reads.
                        drop(q);
                        self.lost(&push, metrics);
                        if push.urgent {
                            self.kick();
                        }
                        return false;
                    }
                }
            }
        }
        if push.urgent {
            // An urgent push goes ahead of queued snapshots and telemetry (a 200 KB snapshot
            // must not hold an emergency back), never ahead of other events: each device's
            // events keep their `deviceSeq` order on the wire.
            let at = q
                .iter()
                .rposition(|p| p.kind == PushKind::Event)
                .map_or(0, |last| last + 1);
            q.insert(at, push);
        } else {
            q.push_back(push);
        }
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Takes the next queued push, if any.
    pub fn next(&self) -> Option<Push> {
        self.queue.locked().pop_front()
    }

    pub fn queued(&self) -> usize {
        self.queue.locked().len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Asks the writer task to close the connection.
    pub fn kick(&self) {
        self.kicked.cancel();
    }

    /// Whatever is still queued when the client goes counts as dropped.
    pub fn discard(&self, metrics: &Metrics) {
        let left: Vec<Push> = self.queue.locked().drain(..).collect();
        for p in &left {
            metrics.push.dropped(p.kind);
            if let Some(pr) = p.priority {
                metrics.push.dropped_event(pr);
            }
        }
    }
}
