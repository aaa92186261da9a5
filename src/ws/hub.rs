//! The client registry and fan-out: bounded per-client queues with an overflow policy,
//! subscriptions indexed by device and event-type bitmask, one encoding shared by all recipients.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// A high or emergency event: never dropped to make room (SPEC); when it cannot be
    /// queued, the client is closed (1008) instead of silently missing it.
    pub urgent: bool,
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
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            devices: None,
            event_mask: u32::MAX,
            min_priority: Priority::Normal,
            telemetry: true,
        }
    }
}

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
}

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
        }
    }

    pub fn login(&self) -> Option<Login> {
        self.login.locked().clone()
    }

    /// Queues a push by the client's overflow policy; never waits. Returns whether it was queued.
    /// Whatever the policy, an urgent push (a high or emergency event) is never the one dropped:
    /// the oldest push that is not urgent makes room for it, and when every queued push is
    /// urgent the client is closed rather than left without it.
    fn offer(&self, push: Push, metrics: &Metrics) -> bool {
        let kind = push.kind;
        let mut q = self.queue.locked();
        if q.len() >= self.capacity {
            let evict_for_urgent = push.urgent && self.overflow != Overflow::Disconnect;
            match self.overflow {
                Overflow::DropNew if !evict_for_urgent => {
                    drop(q);
                    metrics.push.dropped(kind);
                    return false;
                }
                Overflow::Disconnect => {
                    drop(q);
                    metrics.push.dropped(kind);
                    self.kick();
                    return false;
                }
                Overflow::DropNew | Overflow::DropOldest => {
                    // The lowest that is there goes first: snapshots (the next one replaces
                    // them), then telemetry, then normal events; the oldest of its kind.
                    let rank = |p: &Push| if p.urgent { 3 } else { p.kind as usize };
                    let victim = (0..3).find_map(|r| q.iter().position(|p| rank(p) == r));
                    match victim {
                        Some(i) => {
                            if let Some(old) = q.remove(i) {
                                metrics.push.dropped(old.kind);
                            }
                        }
                        None if push.urgent => {
                            // Full of urgent pushes and one more: the client cannot keep up
                            // with what it must not miss.
                            drop(q);
                            metrics.push.dropped(kind);
                            self.kick();
                            return false;
                        }
                        None => {
                            drop(q);
                            metrics.push.dropped(kind);
                            return false;
                        }
                    }
                }
            }
        }
        q.push_back(push);
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

    /// Asks the writer task to close the connection.
    pub fn kick(&self) {
        self.kicked.cancel();
    }

    /// Whatever is still queued when the client goes counts as dropped.
    pub fn discard(&self, metrics: &Metrics) {
        let mut q = self.queue.locked();
        for p in q.drain(..) {
            metrics.push.dropped(p.kind);
        }
    }
}

struct Entry {
    client: Arc<Client>,
    sub: Subscription,
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
}

impl Registry {
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
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(devices: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            registry: RwLock::new(Registry {
                clients: HashMap::new(),
                by_device: vec![HashSet::new(); devices],
                all_devices: HashSet::new(),
            }),
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read_locked()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write_locked()
    }

    /// Starts pushing to a client (at login), with the default subscription: everything.
    pub fn register(&self, client: Arc<Client>) {
        let mut r = self.write();
        let id = client.id;
        if let Some(old) = r.clients.remove(&id) {
            r.unindex(id, &old.sub);
        }
        let sub = Subscription::default();
        r.index(id, &sub);
        r.clients.insert(id, Entry { client, sub });
    }

    /// Stops pushing to a client (logout or disconnect).
    pub fn unregister(&self, id: u64) {
        let mut r = self.write();
        if let Some(old) = r.clients.remove(&id) {
            r.unindex(id, &old.sub);
        }
    }

    /// Ends the session on every socket using `token` (SPEC: `auth.logout` ends it on all of
    /// them): each is told with `push.session` and is not logged in from then on. The socket
    /// `except` (the one logging out, which gets its reply instead) is only unregistered.
    pub fn end_sessions(&self, token: &str, reason: &str, except: u64) {
        let ended: Vec<Arc<Client>> = {
            let mut r = self.write();
            let ids: Vec<u64> = r
                .clients
                .iter()
                .filter(|(_, e)| e.client.login().is_some_and(|l| l.token == token))
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| {
                    let e = r.clients.remove(&id)?;
                    r.unindex(id, &e.sub);
                    Some(e.client)
                })
                .collect()
        };
        let frame = Utf8Bytes::from(
            serde_json::json!({"service": "push.session", "data": {"reason": reason}}).to_string(),
        );
        for c in ended {
            *c.login.locked() = None;
            if c.id != except {
                c.offer(
                    Push {
                        frame: frame.clone(),
                        kind: PushKind::Event,
                        since: Instant::now(),
                        urgent: true,
                    },
                    &self.metrics,
                );
            }
        }
    }

    /// Replaces a client's subscription. False when the client is not registered.
    pub fn subscribe(&self, id: u64, sub: Subscription) -> bool {
        let mut r = self.write();
        let Some(old) = r.clients.get(&id).map(|e| e.sub.clone()) else {
            return false;
        };
        r.unindex(id, &old);
        r.index(id, &sub);
        if let Some(e) = r.clients.get_mut(&id) {
            e.sub = sub;
        }
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

    /// Telemetry of one device to the clients subscribed to it with `telemetry`.
    pub fn publish_telemetry(&self, device: usize, push: Push) {
        self.publish_device(device, push, |s| s.telemetry);
    }

    /// An event of one device, by type bit and priority.
    pub fn publish_event(&self, device: usize, type_bit: u32, priority: Priority, push: Push) {
        self.publish_device(device, push, |s| {
            s.event_mask & type_bit != 0 && priority >= s.min_priority
        });
    }

    fn publish_device(&self, device: usize, push: Push, wants: impl Fn(&Subscription) -> bool) {
        let recipients: Vec<Arc<Client>> = {
            let r = self.read();
            let named = r.by_device.get(device).into_iter().flatten();
            named
                .chain(r.all_devices.iter())
                .filter_map(|id| r.clients.get(id))
                .filter(|e| wants(&e.sub))
                .map(|e| e.client.clone())
                .collect()
        };
        self.deliver(recipients, push);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, n: u8) -> Push {
        Push {
            urgent: false,
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

    #[test]
    fn subscriptions_route_by_device_type_and_priority_and_unregister_cleans_the_index() {
        let m = metrics();
        let hub = Hub::new(2, m.clone());
        let a = Arc::new(Client::new(1, 10, Overflow::DropOldest));
        let b = Arc::new(Client::new(2, 10, Overflow::DropOldest));
        hub.register(a.clone());
        hub.register(b.clone());
        hub.subscribe(
            2,
            Subscription {
                devices: Some(vec![1]),
                event_mask: 0b10,
                min_priority: Priority::High,
                telemetry: false,
            },
        );
        hub.publish_telemetry(1, push(PushKind::Telemetry, 1));
        hub.publish_event(1, 0b10, Priority::Emergency, push(PushKind::Event, 2));
        hub.publish_event(1, 0b10, Priority::Normal, push(PushKind::Event, 3));
        hub.publish_event(0, 0b10, Priority::Emergency, push(PushKind::Event, 4));
        hub.publish_event(1, 0b01, Priority::Emergency, push(PushKind::Event, 5));
        assert_eq!(a.queued(), 5);
        assert_eq!(b.next().unwrap().frame.as_str(), "2");
        assert!(b.next().is_none());
        hub.unregister(1);
        hub.unregister(2);
        assert_eq!(hub.index_sizes(), (0, 0, 0));
    }
}
