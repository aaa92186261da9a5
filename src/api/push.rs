//! The pushes every subscriber gets — telemetry as the pipeline reports it, events once the
//! processor has committed them, the timed snapshot — each encoded once for all clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::config::{Config, Priority};
use crate::events::Event;
use crate::metrics::PushKind;
use crate::model::Report;
use crate::model::{now_ms, rfc3339};
use crate::state::{SharedLive, Telemetry};
use crate::ws::hub::{Hub, Push};

/// What the pipeline and the event processor hand their pushes to.
pub struct Pusher {
    hub: Arc<Hub>,
    config: Arc<Config>,
    live: SharedLive,
}

impl Pusher {
    pub fn new(hub: Arc<Hub>, config: Arc<Config>, live: SharedLive) -> Pusher {
        Pusher { hub, config, live }
    }

    /// `push.event` for one committed event, to the clients whose filters take it (or into
    /// their batch, for a normal event to a client with `batchMs`).
    fn event(&self, e: &Event) {
        let data = e.to_json(&self.config).to_string();
        let frame = format!(r#"{{"service":"push.event","data":{data}}}"#);
        self.hub.publish_event(
            e.device,
            e.kind.bit(),
            e.priority,
            Push {
                frame: Utf8Bytes::from(frame),
                kind: PushKind::Event,
                since: e.at.into_std(),
                urgent: e.priority >= Priority::High,
                priority: Some(e.priority),
            },
            &Utf8Bytes::from(data),
        );
    }

    /// `push.snapshot` of every device to every subscriber.
    fn snapshot(&self) {
        let since = Instant::now();
        let frame = json!({
            "service": "push.snapshot",
            "data": {"ts": rfc3339(now_ms()), "devices": super::services::devices_json(&self.config, &self.live)},
        });
        self.hub.publish_snapshot(Push {
            frame: Utf8Bytes::from(frame.to_string()),
            kind: PushKind::Snapshot,
            since,
            urgent: false,
            priority: None,
        });
    }
}

impl Telemetry for Pusher {
    /// `push.telemetry` for one device's reported changes.
    fn report(&self, report: &Report, read_at: Instant) {
        let Report { device, ts, rows } = report;
        let (device, ts) = (*device, *ts);
        if self.hub.is_empty() || rows.is_empty() {
            return;
        }
        let dev = &self.config.devices[device];
        let points: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|r| {
                (
                    dev.points[r.point].id.clone(),
                    json!({"v": r.value.as_ref().map(crate::model::Value::to_json), "q": r.quality.as_str()}),
                )
            })
            .collect();
        let frame = json!({
            "service": "push.telemetry",
            "data": {"deviceId": dev.id, "ts": rfc3339(ts), "points": points},
        });
        self.hub.publish_telemetry(
            device,
            Push {
                frame: Utf8Bytes::from(frame.to_string()),
                kind: PushKind::Telemetry,
                since: read_at,
                urgent: false,
                priority: None,
            },
        );
    }
}

/// Pushes the events the processor committed, in commit order, until the processor ends.
pub async fn committed_events(pusher: Arc<Pusher>, mut rx: mpsc::Receiver<Vec<Event>>) {
    while let Some(events) = rx.recv().await {
        if pusher.hub.is_empty() {
            continue;
        }
        for e in &events {
            pusher.event(e);
        }
    }
}

/// The timed snapshot push: every `push.interval_ms`, changeable at run time. A change restarts
/// the period from now, so a shorter interval takes effect at once and never bursts.
pub async fn snapshot_ticker(
    pusher: Arc<Pusher>,
    mut interval: watch::Receiver<Duration>,
    cancel: CancellationToken,
) {
    let mut period = *interval.borrow_and_update();
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = interval.changed() => {
                if changed.is_err() {
                    return;
                }
                period = *interval.borrow_and_update();
                next = tokio::time::Instant::now() + period;
            }
            () = tokio::time::sleep_until(next) => {
                if !pusher.hub.is_empty() {
                    pusher.snapshot();
                }
                next += period;
                let now = tokio::time::Instant::now();
                if next < now {
                    next = now + period;
                }
            }
        }
    }
}
