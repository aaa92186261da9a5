//! The client registry and fan-out: bounded per-client queues with an overflow policy,
//! subscriptions indexed by device and event-type bitmask, one encoding shared by all recipients.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Overflow, Priority, Role};
use crate::metrics::{Metrics, PushKind};
use crate::sync::{Locked, RwLocked};

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

/// What a client wants pushed (SPEC `subscribe`); replaced whole by each `subscribe`.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Device indexes; `None` is every device.
    pub devices: Option<Vec<usize>>,
    /// Bit per event type (`EventType::bit`); all ones by default.
    pub event_mask: u32,
    pub min_priority: Priority,
    pub telemetry: bool,
    /// Normal-priority events merged into one `push.events` at most every this many ms (0 off).
    pub batch_ms: u32,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            devices: None,
            event_mask: u32::MAX,
            min_priority: Priority::Normal,
            telemetry: true,
            batch_ms: 0,
        }
    }
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
    batch_ms: AtomicU32,
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
    fn batch_event(&self, data: &Utf8Bytes, since: Instant, metrics: &Metrics) {
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
    fn wants_snapshot(&self) -> bool {
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
    pub fn from(mut self, remote: std::net::SocketAddr) -> Client {
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
    fn offer(&self, push: Push, metrics: &Metrics) -> bool {
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

struct Entry {
    client: Arc<Client>,
    sub: Subscription,
    /// Who it is logged in as, when registered: its place in `Registry::by_user`.
    user: String,
    token: String,
}

#[derive(Default)]
struct Registry {
    /// Authenticated clients: only they get pushes.
    clients: HashMap<u64, Entry>,
    /// Device index → clients subscribed to that device by name. Sets, so a subscription
    /// change costs one step per device it names, never a scan of the other clients (it runs
    /// under the lock every push waits for).
    by_device: Vec<HashSet<u64>>,
    /// Clients subscribed to every device.
    all_devices: HashSet<u64>,
    /// User → token → connections: a user's sessions, and each session's sockets.
    by_user: HashMap<String, HashMap<String, HashSet<u64>>>,
}

impl Registry {
    /// Takes a client out of every index; returns its entry.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.clients.remove(&id)?;
        self.unindex(id, &e.sub);
        if let Some(tokens) = self.by_user.get_mut(&e.user) {
            if let Some(ids) = tokens.get_mut(&e.token) {
                ids.remove(&id);
                if ids.is_empty() {
                    tokens.remove(&e.token);
                }
            }
            if tokens.is_empty() {
                self.by_user.remove(&e.user);
            }
        }
        Some(e)
    }

    /// The connections of one session (`token`), or of all of a user's sessions.
    fn connections(&self, user: &str, token: Option<&str>) -> Vec<u64> {
        let Some(tokens) = self.by_user.get(user) else {
            return Vec::new();
        };
        tokens
            .iter()
            .filter(|(t, _)| token.is_none_or(|want| want == t.as_str()))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect()
    }

    fn unindex(&mut self, id: u64, sub: &Subscription) {
        match &sub.devices {
            None => {
                self.all_devices.remove(&id);
            }
            Some(ds) => {
                for &d in ds {
                    if let Some(v) = self.by_device.get_mut(d) {
                        v.remove(&id);
                    }
                }
            }
        }
    }

    fn index(&mut self, id: u64, sub: &Subscription) {
        match &sub.devices {
            None => {
                self.all_devices.insert(id);
            }
            Some(ds) => {
                for &d in ds {
                    if let Some(v) = self.by_device.get_mut(d) {
                        v.insert(id);
                    }
                }
            }
        }
    }
}

/// The registry of pushed-to clients. Read far more than written: a publish takes the read lock
/// only long enough to copy out its recipients, and never sends under it.
pub struct Hub {
    registry: RwLock<Registry>,
    /// Every open connection, logged in or not, for `system.stats`.
    open: Mutex<HashMap<u64, Arc<Client>>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(devices: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            registry: RwLock::new(Registry {
                clients: HashMap::new(),
                by_device: vec![HashSet::new(); devices],
                all_devices: HashSet::new(),
                by_user: HashMap::new(),
            }),
            open: Mutex::default(),
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read_locked()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write_locked()
    }

    /// A connection opened (before any login).
    pub fn open(&self, client: Arc<Client>) {
        self.open.locked().insert(client.id, client);
    }

    /// A connection closed.
    pub fn close(&self, id: u64) {
        self.open.locked().remove(&id);
    }

    /// Every open connection, oldest first.
    pub fn connections(&self) -> Vec<Arc<Client>> {
        let mut v: Vec<Arc<Client>> = self.open.locked().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Starts pushing to a client (at login, once its `login` is set), with the default
    /// subscription: everything.
    pub fn register(&self, client: Arc<Client>) {
        let Some(login) = client.login() else { return };
        let mut r = self.write();
        let id = client.id;
        r.remove(id);
        let sub = Subscription::default();
        r.index(id, &sub);
        r.by_user
            .entry(login.user.clone())
            .or_default()
            .entry(login.token.clone())
            .or_default()
            .insert(id);
        r.clients.insert(
            id,
            Entry {
                client,
                sub,
                user: login.user,
                token: login.token,
            },
        );
    }

    /// Stops pushing to a client (logout or disconnect).
    pub fn unregister(&self, id: u64) {
        self.write().remove(id);
    }

    /// Ends the session `token` of `user` on every socket that uses it (SPEC: `auth.logout`
    /// ends it on all of them; so does its expiry): each is told with `push.session` and is not
    /// logged in from then on. The socket `except` (the one logging out, which gets its reply
    /// instead) is only unregistered.
    pub fn end_session(&self, user: &str, token: &str, reason: &str, except: u64) {
        self.end(user, Some(token), reason, except);
    }

    /// Ends every session of `user` on every socket (a reload removed the user or changed its
    /// role: `"user changed"`). Returns the clients told, so a caller can wait for them to
    /// have been sent the news.
    pub fn end_user_sessions(&self, user: &str, reason: &str) -> Vec<Arc<Client>> {
        self.end(user, None, reason, 0)
    }

    fn end(&self, user: &str, token: Option<&str>, reason: &str, except: u64) -> Vec<Arc<Client>> {
        let ended: Vec<Arc<Client>> = {
            let mut r = self.write();
            let ids = r.connections(user, token);
            ids.into_iter()
                .filter_map(|id| r.remove(id).map(|e| e.client))
                .collect()
        };
        let frame = Utf8Bytes::from(
            serde_json::json!({"service": "push.session", "data": {"reason": reason}}).to_string(),
        );
        for c in &ended {
            *c.login.locked() = None;
            if c.id != except {
                c.offer(session_push(&frame), &self.metrics);
            }
        }
        ended
    }

    /// One push to every connection of one user, whatever it subscribed to (the seed's
    /// `BroadcastToUser`).
    pub fn send_to_user(&self, user: &str, push: Push) {
        let recipients: Vec<Arc<Client>> = {
            let r = self.read();
            r.connections(user, None)
                .into_iter()
                .filter_map(|id| r.clients.get(&id).map(|e| e.client.clone()))
                .collect()
        };
        self.deliver(recipients, push);
    }

    /// The (user, token) of every session with a connection, for the expiry sweep.
    pub fn sessions(&self) -> Vec<(String, String)> {
        let r = self.read();
        r.by_user
            .iter()
            .flat_map(|(u, tokens)| tokens.keys().map(move |t| (u.clone(), t.clone())))
            .collect()
    }

    /// Replaces a client's subscription. False when the client is not registered.
    pub fn subscribe(&self, id: u64, sub: Subscription) -> bool {
        let client = {
            let mut r = self.write();
            let Some(old) = r.clients.get(&id).map(|e| e.sub.clone()) else {
                return false;
            };
            r.unindex(id, &old);
            r.index(id, &sub);
            let batch_ms = sub.batch_ms;
            let Some(e) = r.clients.get_mut(&id) else {
                return false;
            };
            e.sub = sub;
            e.client.batch_ms.store(batch_ms, Relaxed);
            e.client.clone()
        };
        // Events waiting under the old setting go out now, ahead of any new ones.
        client.flush_batch(&self.metrics);
        true
    }

    pub fn len(&self) -> usize {
        self.read().clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sizes of the indexes, for leak tests: (clients, by-device entries, all-device entries).
    pub fn index_sizes(&self) -> (usize, usize, usize) {
        let r = self.read();
        (
            r.clients.len(),
            r.by_device.iter().map(HashSet::len).sum(),
            r.all_devices.len(),
        )
    }

    fn deliver(&self, recipients: Vec<Arc<Client>>, push: Push) {
        let started = Instant::now();
        // Counted as sent when the writer hands it to the socket; drops are counted here.
        for c in recipients {
            c.offer(push.clone(), &self.metrics);
        }
        self.metrics.push.duration.observe(started.elapsed());
    }

    /// A snapshot to every authenticated client.
    pub fn publish_all(&self, push: Push) {
        let recipients: Vec<Arc<Client>> = self
            .read()
            .clients
            .values()
            .map(|e| e.client.clone())
            .collect();
        self.deliver(recipients, push);
    }

    /// A snapshot to every authenticated client that is due one: a slow client gets them less
    /// often ([`Client::wants_snapshot`]).
    pub fn publish_snapshot(&self, push: Push) {
        let recipients: Vec<Arc<Client>> = self
            .read()
            .clients
            .values()
            .filter(|e| e.client.wants_snapshot())
            .map(|e| e.client.clone())
            .collect();
        self.deliver(recipients, push);
    }

    /// Telemetry of one device to the clients subscribed to it with `telemetry`.
    pub fn publish_telemetry(&self, device: usize, push: Push) {
        self.publish_device(device, push, |s| s.telemetry);
    }

    /// An event of one device, by type bit and priority. `data` is the event's SPEC JSON
    /// alone: a normal event for a client that batches waits in its batch instead.
    pub fn publish_event(
        &self,
        device: usize,
        type_bit: u32,
        priority: Priority,
        push: Push,
        data: &Utf8Bytes,
    ) {
        let started = Instant::now();
        let recipients = self.recipients(device, |s| {
            s.event_mask & type_bit != 0 && priority >= s.min_priority
        });
        for c in recipients {
            if push.urgent || c.batch_ms.load(Relaxed) == 0 {
                c.offer(push.clone(), &self.metrics);
            } else {
                c.batch_event(data, push.since, &self.metrics);
            }
        }
        self.metrics.push.duration.observe(started.elapsed());
    }

    fn publish_device(&self, device: usize, push: Push, wants: impl Fn(&Subscription) -> bool) {
        let recipients = self.recipients(device, wants);
        self.deliver(recipients, push);
    }

    /// The clients subscribed to `device` whose subscription `wants` a push.
    fn recipients(&self, device: usize, wants: impl Fn(&Subscription) -> bool) -> Vec<Arc<Client>> {
        let r = self.read();
        let named = r.by_device.get(device).into_iter().flatten();
        named
            .chain(r.all_devices.iter())
            .filter_map(|id| r.clients.get(id))
            .filter(|e| wants(&e.sub))
            .map(|e| e.client.clone())
            .collect()
    }
}

/// A `push.session` notice: never dropped to make room, like an urgent event.
fn session_push(frame: &Utf8Bytes) -> Push {
    Push {
        frame: frame.clone(),
        kind: PushKind::Event,
        since: Instant::now(),
        urgent: true,
        priority: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, n: u8) -> Push {
        Push {
            urgent: false,
            priority: None,
            frame: Utf8Bytes::from(format!("{n}")),
            kind,
            since: Instant::now(),
        }
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(vec!["a".into(), "b".into()], vec![]))
    }

    #[test]
    fn overflow_policies_drop_and_count() {
        let m = metrics();
        let c = Client::new(1, 2, Overflow::DropOldest);
        for i in 0..5 {
            c.offer(push(PushKind::Telemetry, i), &m);
        }
        assert_eq!(c.next().unwrap().frame.as_str(), "3");
        assert_eq!(m.push.count(PushKind::Telemetry, true), 3);
        let c = Client::new(2, 2, Overflow::DropNew);
        for i in 0..5 {
            c.offer(push(PushKind::Event, i), &m);
        }
        assert_eq!(c.next().unwrap().frame.as_str(), "0");
        assert_eq!(m.push.count(PushKind::Event, true), 3);
        let c = Client::new(3, 1, Overflow::Disconnect);
        c.offer(push(PushKind::Snapshot, 0), &m);
        assert!(!c.kicked.is_cancelled());
        c.offer(push(PushKind::Snapshot, 1), &m);
        assert!(c.kicked.is_cancelled());
    }

    /// Push under load, as found: a slow client, a stream of snapshots, one emergency alarm
    /// under `drop_oldest` → the alarm was evicted by the next snapshot and never arrived.
    #[test]
    fn an_urgent_event_is_never_the_push_dropped() {
        let m = metrics();
        let urgent = |n| Push {
            urgent: true,
            ..push(PushKind::Event, n)
        };
        for overflow in [Overflow::DropOldest, Overflow::DropNew] {
            let c = Client::new(1, 3, overflow);
            c.offer(urgent(0), &m);
            for i in 1..10 {
                c.offer(push(PushKind::Snapshot, i), &m);
            }
            assert_eq!(c.next().unwrap().frame.as_str(), "0", "{overflow:?}");
            // A full queue takes an urgent push in place of a snapshot.
            let c = Client::new(2, 2, overflow);
            c.offer(push(PushKind::Snapshot, 1), &m);
            c.offer(push(PushKind::Snapshot, 2), &m);
            assert!(c.offer(urgent(3), &m));
            let left: Vec<_> = std::iter::from_fn(|| c.next()).map(|p| p.frame).collect();
            assert!(
                left.iter().any(|f| f.as_str() == "3"),
                "{overflow:?} {left:?}"
            );
            // Below the urgent ones, snapshots go first, then telemetry, then normal events.
            let c = Client::new(4, 3, overflow);
            c.offer(push(PushKind::Event, 1), &m);
            c.offer(push(PushKind::Telemetry, 2), &m);
            c.offer(push(PushKind::Snapshot, 3), &m);
            c.offer(urgent(4), &m);
            c.offer(urgent(5), &m);
            let left: Vec<_> = std::iter::from_fn(|| c.next()).map(|p| p.frame).collect();
            assert_eq!(
                left.iter()
                    .map(axum::extract::ws::Utf8Bytes::as_str)
                    .collect::<Vec<_>>(),
                ["1", "4", "5"],
                "{overflow:?}"
            );
            // Full of urgent pushes: one more closes the client rather than lose one.
            let c = Client::new(3, 2, overflow);
            c.offer(urgent(1), &m);
            c.offer(urgent(2), &m);
            assert!(!c.kicked.is_cancelled());
            assert!(!c.offer(urgent(3), &m));
            assert!(c.kicked.is_cancelled(), "{overflow:?}");
        }
    }

    fn logged_in(id: u64, user: &str, token: &str) -> Arc<Client> {
        let c = Arc::new(Client::new(id, 10, Overflow::DropOldest));
        *c.login.locked() = Some(Login {
            user: user.into(),
            role: Role::Admin,
            token: token.into(),
        });
        c
    }

    #[test]
    fn an_urgent_push_goes_ahead_of_snapshots_and_telemetry_but_not_of_events() {
        let m = metrics();
        let c = Client::new(1, 10, Overflow::DropOldest);
        let urgent = |n| Push {
            urgent: true,
            ..push(PushKind::Event, n)
        };
        let order = |c: &Client| -> Vec<String> {
            std::iter::from_fn(|| c.next())
                .map(|p| p.frame.to_string())
                .collect()
        };
        c.offer(push(PushKind::Event, 1), &m);
        c.offer(push(PushKind::Snapshot, 2), &m);
        c.offer(push(PushKind::Telemetry, 3), &m);
        c.offer(urgent(4), &m);
        assert_eq!(order(&c), ["1", "4", "2", "3"]);
        // Behind a later event: it stays behind it (events keep their order).
        c.offer(push(PushKind::Snapshot, 5), &m);
        c.offer(push(PushKind::Event, 6), &m);
        c.offer(urgent(7), &m);
        assert_eq!(order(&c), ["5", "6", "7"]);
    }

    #[test]
    fn a_session_ends_on_every_socket_of_its_token_and_a_user_on_all_of_theirs() {
        let hub = Hub::new(1, metrics());
        // ann: two sockets on one token, one on another; bob: one.
        let a1 = logged_in(1, "ann", "t1");
        let a2 = logged_in(2, "ann", "t1");
        let a3 = logged_in(3, "ann", "t2");
        let b = logged_in(4, "bob", "t3");
        for c in [&a1, &a2, &a3, &b] {
            hub.register(c.clone());
        }
        hub.send_to_user("ann", push(PushKind::Event, 9));
        assert_eq!(
            (a1.queued(), a2.queued(), a3.queued(), b.queued()),
            (1, 1, 1, 0)
        );
        // Logout on socket 1: socket 2 (same token) is told, socket 3 keeps its session.
        hub.end_session("ann", "t1", "logout", 1);
        assert_eq!(a1.queued(), 1, "the one logging out gets its reply instead");
        a2.next();
        assert!(a2.next().unwrap().frame.contains("logout"));
        assert!(a2.login().is_none() && a3.login().is_some());
        assert_eq!(hub.len(), 2);
        // A reload removed ann: her last socket is told; bob keeps his.
        let told = hub.end_user_sessions("ann", "user changed");
        assert_eq!(told.len(), 1);
        a3.next();
        assert!(a3.next().unwrap().frame.contains("user changed"));
        assert_eq!(hub.sessions(), [("bob".to_string(), "t3".to_string())]);
        hub.unregister(4);
        assert_eq!(hub.sessions(), []);
        assert_eq!(hub.index_sizes(), (0, 0, 0));
    }

    #[test]
    fn subscriptions_route_by_device_type_and_priority_and_unregister_cleans_the_index() {
        let m = metrics();
        let hub = Hub::new(2, m.clone());
        let a = logged_in(1, "ann", "t1");
        let b = logged_in(2, "bob", "t2");
        hub.register(a.clone());
        hub.register(b.clone());
        hub.subscribe(
            2,
            Subscription {
                devices: Some(vec![1]),
                event_mask: 0b10,
                min_priority: Priority::High,
                telemetry: false,
                batch_ms: 0,
            },
        );
        hub.publish_telemetry(1, push(PushKind::Telemetry, 1));
        hub.publish_event(
            1,
            0b10,
            Priority::Emergency,
            push(PushKind::Event, 2),
            &Utf8Bytes::from("{}"),
        );
        hub.publish_event(
            1,
            0b10,
            Priority::Normal,
            push(PushKind::Event, 3),
            &Utf8Bytes::from("{}"),
        );
        hub.publish_event(
            0,
            0b10,
            Priority::Emergency,
            push(PushKind::Event, 4),
            &Utf8Bytes::from("{}"),
        );
        hub.publish_event(
            1,
            0b01,
            Priority::Emergency,
            push(PushKind::Event, 5),
            &Utf8Bytes::from("{}"),
        );
        assert_eq!(a.queued(), 5);
        assert_eq!(b.next().unwrap().frame.as_str(), "2");
        assert!(b.next().is_none());
        hub.unregister(1);
        hub.unregister(2);
        assert_eq!(hub.index_sizes(), (0, 0, 0));
    }
}
