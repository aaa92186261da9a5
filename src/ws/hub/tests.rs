//! Unit tests of `ws/hub.rs` and the client queue.

use super::*;
use crate::config::{Overflow, Role};

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

/// A log written into memory, for the lines a test expects once.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.locked().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn drops_are_logged_once_per_episode_and_counted_by_priority() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let lines = |what: &str| {
        String::from_utf8_lossy(&log.0.locked())
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    let m = metrics();
    let c = Client::new(1, 2, Overflow::DropNew);
    let event = |n| Push {
        priority: Some(Priority::Normal),
        ..push(PushKind::Event, n)
    };
    for n in 0..5 {
        c.offer(event(n), &m);
    }
    // Three dropped: one line for the episode, each counted, by priority too.
    assert_eq!(lines("client too slow"), 1);
    assert_eq!(c.dropped.load(Relaxed), 3);
    assert_eq!(m.push.count(PushKind::Event, true), 3);
    assert_eq!(
        m.push.event_drops[Priority::Normal.rank() as usize].load(Relaxed),
        3
    );
    // Drained: the episode ends with its count; the next drop starts a new one.
    while c.next().is_some() {}
    c.caught_up();
    assert_eq!(lines("caught up after dropping 3 pushes"), 1);
    for n in 0..3 {
        c.offer(event(n), &m);
    }
    assert_eq!(lines("client too slow"), 2);
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
                .map(tungstenite::Utf8Bytes::as_str)
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
    hub.end_session("ann", "t1", "logout", Some(1));
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
