//! Alarm notifications: one task per `[[notifiers]]` entry sends what the store queued for it
//! (in the commit of the alarm's event), moves its queue on only once the receiver took a
//! message, retries with backoff that outlives a restart, turns a storm into one digest a
//! minute, and sends reminders and escalations while nobody acknowledges.

pub mod email;
pub mod message;
pub mod webhook;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Notifier, NotifierKind};
use crate::metrics::notify::{Result as Outcome, Status};
use crate::metrics::Metrics;
use crate::model::{now_ms, Millis};
use crate::shelves::Shelves;
use crate::store::notify::{Due, Kind, Notice, Update};
use crate::store::{StoreCmd, StoreHandle};
use crate::sync::Locked as _;
use message::Message;

/// More messages than this within a minute is a storm: what is due goes as one digest a minute.
pub const STORM_PER_MIN: usize = 5;
const MINUTE: Duration = Duration::from_secs(60);
/// The most alarms one digest carries (and one look at the queue reads).
const MAX_DIGEST: usize = 1000;
/// How often an idle notifier looks at its queue: an alarm waits at most this for its turn.
const LOOK: Duration = Duration::from_secs(1);
/// An e-mail attempt as a whole (connection, TLS, each command).
pub const ATTEMPT_EMAIL: Duration = Duration::from_secs(30);

/// The pause before the next attempt after `attempts` failed ones: 2 s doubling to 5 min,
/// ±20 % so that gateways failing together do not retry together.
fn retry_after(attempts: i64) -> Duration {
    let base = Duration::from_secs(2 << attempts.clamp(0, 8)).min(Duration::from_secs(300));
    base.mul_f64(rand::random_range(0.8..1.2))
}

/// What a notifier task is given.
#[derive(Clone)]
pub struct Ports {
    pub config: Arc<Config>,
    pub store: StoreHandle,
    pub shelves: Arc<Shelves>,
    pub metrics: Arc<Metrics>,
}

/// One task per configured notifier, stopped by `cancel`.
pub fn start(ports: &Ports, tasks: &TaskTracker, cancel: &CancellationToken) {
    for n in &ports.config.notifiers {
        let task = Task {
            status: ports.metrics.notifiers.status(&n.name),
            n: n.clone(),
            ports: ports.clone(),
            tls: None,
            sent: VecDeque::new(),
            last_digest: None,
            hold: None,
            failing: false,
        };
        tasks.spawn(task.run(cancel.child_token()));
    }
}

/// Sends one message through a notifier: `Ok` once the receiver took it.
pub async fn deliver(
    n: &Notifier,
    config: &Config,
    tls: &mut Option<Arc<rustls::ClientConfig>>,
    m: &Message,
) -> Result<(), String> {
    match &n.kind {
        NotifierKind::Webhook { url, secret } => {
            if tls.is_none() && url.0.starts_with("https://") {
                *tls = Some(Arc::new(crate::tls::client_config("https://", None)?));
            }
            webhook::post(
                &url.0,
                &secret.0,
                &m.id,
                m.body.clone().into_bytes(),
                tls.as_ref(),
            )
            .await
        }
        NotifierKind::Email(e) => email::send(e, &config.gateway.id, m).await,
    }
}

/// `notify.test`: a test message through `name`, counted like any other.
pub async fn test(
    config: &Config,
    metrics: &Metrics,
    name: &str,
    by: &str,
) -> Option<Result<(), String>> {
    let n = config.notifiers.iter().find(|n| n.name == name)?;
    let status = metrics.notifiers.status(name);
    let m = message::test(config, name, by, now_ms());
    let r = deliver(n, config, &mut None, &m).await;
    record(&status, &r);
    Some(r)
}

fn record(status: &Status, r: &Result<(), String>) {
    match r {
        Ok(()) => {
            status.count(Outcome::Ok, 1);
            *status.last_ok.locked() = Some(now_ms());
        }
        Err(e) => {
            status.count(Outcome::Failed, 1);
            *status.last_error.locked() = Some((now_ms(), e.clone()));
        }
    }
}

/// What shelving is looked up by, read off an event's JSON text without a tree.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ids<'a> {
    #[serde(borrow)]
    device_id: &'a str,
    #[serde(borrow)]
    point_id: Option<&'a str>,
}

struct Task {
    n: Notifier,
    ports: Ports,
    status: Arc<Status>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// When each message of the last minute went: the storm's measure.
    sent: VecDeque<Instant>,
    last_digest: Option<Instant>,
    /// After a failure, nothing is tried before this: the receiver is down for every message.
    hold: Option<Instant>,
    /// Logged once when it starts failing and once when it recovers.
    failing: bool,
}

impl Task {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            // A stop does not wait for a receiver that hangs: what was not recorded as sent is
            // sent again after the restart (at least once; the id lets the receiver drop it).
            let turn = tokio::select! {
                () = cancel.cancelled() => return,
                t = self.turn() => t,
            };
            let wait = match turn {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(notifier = self.n.name, "notifier: {e}");
                    Some(LOOK)
                }
            };
            if let Some(w) = wait {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(w) => {}
                }
            } else if cancel.is_cancelled() {
                return;
            }
        }
    }

    /// One look at the queue and at most one message; how long to wait before the next
    /// (`None`: at once).
    async fn turn(&mut self) -> Result<Option<Duration>, String> {
        if let Some(h) = self.hold {
            if let Some(left) = h.checked_duration_since(Instant::now()) {
                return Ok(Some(left.min(LOOK)));
            }
            self.hold = None;
        }
        let now = now_ms();
        let (name, config) = (self.n.name.clone(), Arc::clone(&self.ports.config));
        let (due, backlog, next) = self
            .ports
            .store
            .readers
            .query(move |conn| {
                let due = crate::store::notify::due(conn, &config, &name, now, MAX_DIGEST)?;
                let backlog = crate::store::notify::backlog(conn, &name)?;
                let next = crate::store::notify::next_due(conn, &name)?;
                Ok((due, backlog, next))
            })
            .await
            .map_err(|e| e.to_string())?;
        self.status
            .backlog
            .store(backlog, std::sync::atomic::Ordering::Relaxed);
        if due.is_empty() {
            let until_next = next.map_or(LOOK, |t| Duration::from_millis((t - now).max(0) as u64));
            return Ok(Some(until_next.min(LOOK)));
        }
        let (send, update) = self.sort_out(due, now);
        self.commit(update).await?;
        if send.is_empty() {
            return Ok(None);
        }
        self.send(send, now).await
    }

    /// What is still worth sending; the rest goes (acknowledged, superseded, shelved, its
    /// event gone) or waits (a reminder or escalation of a shelved alarm, until its shelving ends).
    fn sort_out(&self, due: Vec<Due>, now: Millis) -> (Vec<Due>, Update) {
        let mut update = Update::default();
        let mut send = Vec::new();
        for d in due {
            let Some(event) = &d.event else {
                update.done.push(d.id);
                continue;
            };
            let wanted = match d.kind {
                Kind::Alarm => true,
                Kind::Reminder => d.unacked && d.active,
                Kind::Escalation => d.unacked,
            };
            if !wanted {
                update.done.push(d.id);
                continue;
            }
            let ids: Ids<'_> = serde_json::from_str(event).unwrap_or_default();
            let shelving =
                self.ports
                    .shelves
                    .covering(&d.alarm_key, ids.device_id, ids.point_id, now);
            match (shelving, d.kind) {
                (None, _) => send.push(d),
                (Some(_), Kind::Alarm) => {
                    self.status.count(Outcome::Shelved, 1);
                    update.done.push(d.id);
                }
                (Some((_, s)), _) => update.postpone.push((d.id, s.until)),
            }
        }
        (send, update)
    }

    async fn send(&mut self, mut send: Vec<Due>, now: Millis) -> Result<Option<Duration>, String> {
        let at = Instant::now();
        while self
            .sent
            .front()
            .is_some_and(|t| at.duration_since(*t) >= MINUTE)
        {
            self.sent.pop_front();
        }
        let digest = self.sent.len() + send.len() > STORM_PER_MIN;
        if digest {
            if let Some(left) = self
                .last_digest
                .and_then(|t| (t + MINUTE).checked_duration_since(at))
            {
                return Ok(Some(left.min(LOOK)));
            }
        } else {
            send.truncate(1);
        }
        let config = Arc::clone(&self.ports.config);
        let m = if digest {
            message::digest(&config, &send)
        } else {
            message::single(&config, &send[0])
        };
        let result = deliver(&self.n, &config, &mut self.tls, &m).await;
        record(&self.status, &result);
        let mut update = Update::default();
        match &result {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(notifier = self.n.name, "notifier delivers again");
                }
                self.sent.push_back(at);
                if digest {
                    self.last_digest = Some(at);
                }
                for d in &send {
                    update.done.push(d.id);
                    self.remind(d, now, &mut update);
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(notifier = self.n.name, "notifier cannot deliver: {e}");
                }
                let attempts = send.iter().map(|d| d.attempts).max().unwrap_or(0);
                let pause = retry_after(attempts);
                self.hold = Some(at + pause);
                let due = now + pause.as_millis() as i64;
                update.retry = send.iter().map(|d| (d.id, due, e.clone())).collect();
            }
        }
        self.commit(update).await?;
        Ok(None)
    }

    /// The next reminder of an alarm still active and unacknowledged, when asked for.
    fn remind(&self, d: &Due, now: Millis, update: &mut Update) {
        let Some(every) = self.n.repeat_unacked else {
            return;
        };
        if d.kind == Kind::Escalation || !(d.active && d.unacked) {
            return;
        }
        update.add.push(Notice {
            notifier: self.n.name.clone(),
            event_seq: d.event_seq,
            alarm_key: d.alarm_key.clone(),
            kind: Kind::Reminder,
            n: d.n + 1,
            due: now + every.as_millis() as i64,
        });
    }

    async fn commit(&self, update: Update) -> Result<(), String> {
        if update == Update::default() {
            return Ok(());
        }
        let (done, committed) = tokio::sync::oneshot::channel();
        if !self
            .ports
            .store
            .send(StoreCmd::Notified { update, done })
            .await
        {
            return Err("the store is gone".into());
        }
        match committed.await {
            Ok(true) => Ok(()),
            _ => Err("the store cannot write: the queue moves on once it can".into()),
        }
    }
}
