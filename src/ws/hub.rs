//! The client registry and fan-out: subscriptions indexed by device and event-type bitmask,
//! sessions indexed by user and token, every open connection, one encoding shared by all
//! recipients. Each client's own queue is `ws::client`'s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tungstenite::Utf8Bytes;

pub use super::client::{Client, Login, Push, MAX_SNAPSHOT_FACTOR};
use crate::config::Priority;
use crate::metrics::{Metrics, PushKind};
use crate::sync::{Locked, RwLocked};

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
    /// Open connections whose socket is logged in now.
    pub fn logged_in(&self) -> usize {
        self.open
            .locked()
            .values()
            .filter(|c| c.login().is_some())
            .count()
    }

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

    /// A registered client's subscription (a reload carries it to the next hub).
    pub fn subscription(&self, id: u64) -> Option<Subscription> {
        self.read().clients.get(&id).map(|e| e.sub.clone())
    }

    /// Stops pushing to a client (logout or disconnect).
    pub fn unregister(&self, id: u64) {
        self.write().remove(id);
    }

    /// Ends the session `token` of `user` on every socket that uses it (SPEC: `auth.logout`
    /// ends it on all of them; so does its expiry): each is told with `push.session` and is not
    /// logged in from then on. The socket `except` (the one logging out, which gets its reply
    /// instead) is only unregistered.
    pub fn end_session(&self, user: &str, token: &str, reason: &str, except: Option<u64>) {
        self.end(user, Some(token), reason, except);
    }

    /// Ends every session of `user` on every socket (a reload removed the user or changed its
    /// role: `"user changed"`). Returns the clients told, so a caller can wait for them to
    /// have been sent the news.
    pub fn end_user_sessions(&self, user: &str, reason: &str) -> Vec<Arc<Client>> {
        self.end(user, None, reason, None)
    }

    fn end(
        &self,
        user: &str,
        token: Option<&str>,
        reason: &str,
        except: Option<u64>,
    ) -> Vec<Arc<Client>> {
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
            if Some(c.id) != except {
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
mod tests;
