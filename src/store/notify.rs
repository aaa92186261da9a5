//! The notification queue: what each notifier still has to send, written in the same commit
//! as the alarm it is about (so nothing is notified that a crash could forget, and nothing
//! committed goes unnotified), read back when due, and moved on after each attempt.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::config::Config;
use crate::model::event::{AlarmOp, Event, EventState};
use crate::model::Millis;

/// What a queued message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The alarm's event itself: raised or cleared.
    Alarm,
    /// Still active and unacknowledged, `n` times over.
    Reminder,
    /// Not acknowledged in time: sent to the notifier escalated to.
    Escalation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alarm => "alarm",
            Kind::Reminder => "reminder",
            Kind::Escalation => "escalation",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "reminder" => Kind::Reminder,
            "escalation" => Kind::Escalation,
            _ => Kind::Alarm,
        }
    }
}

/// A message to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub notifier: String,
    pub event_seq: i64,
    pub alarm_key: String,
    pub kind: Kind,
    pub n: i64,
    pub due: Millis,
}

/// After an attempt: rows sent (or no longer wanted) go, failed ones wait until `due`, and
/// follow-ups (the next reminder) are queued, all in one commit.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Update {
    pub done: Vec<i64>,
    /// Row, when to try again, the error.
    pub retry: Vec<(i64, Millis, String)>,
    /// Row and when it is due now, with no attempt counted (its alarm is shelved until then).
    pub postpone: Vec<(i64, Millis)>,
    pub add: Vec<Notice>,
}

/// The messages an alarm's event queues, by the config's notifiers: one for each notifier
/// that takes it, and for a raise, the escalation each of them asks for.
pub(super) fn queue_event(
    config: &Config,
    tx: &Transaction<'_>,
    e: &Event,
) -> rusqlite::Result<()> {
    let ((Some(AlarmOp::Raise(key)), EventState::Active)
    | (Some(AlarmOp::Clear(key)), EventState::Cleared)) = (&e.alarm, e.state)
    else {
        return Ok(());
    };
    let device = config.source_id(e.device);
    for n in config
        .notifiers
        .iter()
        .filter(|n| n.takes(e.priority, device))
    {
        add(
            tx,
            &Notice {
                notifier: n.name.clone(),
                event_seq: e.seq as i64,
                alarm_key: key.clone(),
                kind: Kind::Alarm,
                n: 0,
                due: e.ts,
            },
        )?;
        if let (EventState::Active, Some(after), Some(to)) =
            (e.state, n.escalate_after, &n.escalate_to)
        {
            add(
                tx,
                &Notice {
                    notifier: to.clone(),
                    event_seq: e.seq as i64,
                    alarm_key: key.clone(),
                    kind: Kind::Escalation,
                    n: 0,
                    due: e.ts + after.as_millis() as i64,
                },
            )?;
        }
    }
    Ok(())
}

fn add(tx: &Transaction<'_>, n: &Notice) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO notify_queue (notifier, event_seq, alarm_key, kind, n, due)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        n.notifier,
        n.event_seq,
        n.alarm_key,
        n.kind.as_str(),
        n.n,
        n.due
    ])?;
    Ok(())
}

pub(super) fn apply(tx: &Transaction<'_>, u: &Update) -> rusqlite::Result<()> {
    for id in &u.done {
        tx.prepare_cached("DELETE FROM notify_queue WHERE id = ?1")?
            .execute([id])?;
    }
    for (id, due, error) in &u.retry {
        tx.prepare_cached(
            "UPDATE notify_queue SET due = ?2, attempts = attempts + 1, last_error = ?3 WHERE id = ?1",
        )?
        .execute(params![id, due, error])?;
    }
    for (id, due) in &u.postpone {
        tx.prepare_cached("UPDATE notify_queue SET due = ?2 WHERE id = ?1")?
            .execute(params![id, due])?;
    }
    for n in &u.add {
        add(tx, n)?;
    }
    Ok(())
}

/// A queued message that is due, with what it is about.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub kind: Kind,
    pub n: i64,
    pub attempts: i64,
    pub event_seq: i64,
    pub alarm_key: String,
    /// The event in SPEC's shape, as JSON text (a thousand of them as trees cost megabytes);
    /// `None` when retention took it.
    pub event: Option<String>,
    /// This occurrence of the alarm is still listed and nobody acknowledged it.
    pub unacked: bool,
    /// ... and it is active.
    pub active: bool,
}

/// Up to `limit` of `notifier`'s messages due at `now`, oldest first.
pub fn due(
    conn: &Connection,
    config: &Config,
    notifier: &str,
    now: Millis,
    limit: usize,
) -> rusqlite::Result<Vec<Due>> {
    let mut q = conn.prepare_cached(
        "SELECT q.id, q.kind, q.n, q.attempts, q.event_seq, q.alarm_key,
                a.acked_by IS NULL AND a.key IS NOT NULL, COALESCE(a.state = 'active', 0)
         FROM notify_queue q LEFT JOIN alarms a ON a.key = q.alarm_key AND a.event_seq = q.event_seq
         WHERE q.notifier = ?1 AND q.due <= ?2 ORDER BY q.due, q.id LIMIT ?3",
    )?;
    let rows: Vec<Due> = q
        .query_map(params![notifier, now, limit as i64], |r| {
            Ok(Due {
                id: r.get(0)?,
                kind: Kind::parse(&r.get::<_, String>(1)?),
                n: r.get(2)?,
                attempts: r.get(3)?,
                event_seq: r.get(4)?,
                alarm_key: r.get(5)?,
                event: None,
                unacked: r.get(6)?,
                active: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut ev = conn.prepare_cached("SELECT * FROM events WHERE seq = ?1")?;
    rows.into_iter()
        .map(|mut d| {
            d.event = ev
                .query_row([d.event_seq], |r| {
                    super::query::event_row_json(config, r).map(|j| j.to_string())
                })
                .optional()?;
            Ok(d)
        })
        .collect()
}

/// When `notifier`'s next message is due, if it has any.
pub fn next_due(conn: &Connection, notifier: &str) -> rusqlite::Result<Option<Millis>> {
    conn.prepare_cached("SELECT MIN(due) FROM notify_queue WHERE notifier = ?1")?
        .query_row([notifier], |r| r.get(0))
}

/// Messages waiting for `notifier` (due or not).
pub fn backlog(conn: &Connection, notifier: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT COUNT(*) FROM notify_queue WHERE notifier = ?1")?
        .query_row([notifier], |r| r.get(0))
}

/// At open: the rows of notifiers no longer configured go (nobody would ever send them).
pub(super) fn forget_unconfigured(conn: &Connection, config: &Config) -> rusqlite::Result<()> {
    let names: Vec<&str> = config.notifiers.iter().map(|n| n.name.as_str()).collect();
    let names = serde_json::to_string(&names).unwrap_or_default();
    let gone = conn.execute(
        "DELETE FROM notify_queue WHERE notifier NOT IN (SELECT value FROM json_each(?1))",
        [names],
    )?;
    if gone > 0 {
        tracing::warn!(
            "{gone} queued notifications dropped: their notifier is no longer configured"
        );
    }
    Ok(())
}
