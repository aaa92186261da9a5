//! Acknowledging alarms, whoever asks (the dashboard's `alarms.ack`, the central site over
//! MQTT): each alarm not yet acknowledged is marked in the store, then recorded as an `info`
//! event (who, comment) that is logged, pushed and synced like any other.

use std::sync::Arc;

use serde_json::Value as Json;
use tokio::sync::oneshot;

use super::processor::OperatorEvents;
use super::{Draft, EventState, EventType};
use crate::config::{Config, Priority};
use crate::model::event::AlarmOp;
use crate::model::{now_ms, Millis};
use crate::store::{self, AckError, StoreCmd, StoreHandle};

/// The longest acknowledgement comment kept.
pub const MAX_COMMENT: usize = 500;

/// What acknowledging needs: the config, the store, and the way in for operator events
/// (`None` in a gateway without a pipeline).
#[derive(Clone)]
pub struct AckPort {
    pub config: Arc<Config>,
    pub store: StoreHandle,
    pub operator: Option<OperatorEvents>,
}

/// Which alarms.
#[derive(Debug, Clone)]
pub enum Which {
    One(String),
    Many(Vec<String>),
    /// Every one of a device's (or a bus's) not yet acknowledged.
    Device(String),
}

#[derive(Debug)]
pub struct Acked {
    pub acked: Vec<String>,
    pub ts: Millis,
}

#[derive(Debug)]
pub enum AckFailure {
    BadRequest(String),
    NotFound(String),
    Internal(String),
}

impl std::fmt::Display for AckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckFailure::BadRequest(m) | AckFailure::NotFound(m) | AckFailure::Internal(m) => {
                f.write_str(m)
            }
        }
    }
}

/// Acknowledges `which` as `user`; an alarm already acknowledged is not acknowledged again.
pub async fn acknowledge(
    port: &AckPort,
    which: Which,
    user: &str,
    comment: &str,
) -> Result<Acked, AckFailure> {
    if comment.chars().count() > MAX_COMMENT {
        return Err(AckFailure::BadRequest(format!(
            "param `comment` is over {MAX_COMMENT} characters"
        )));
    }
    let config = Arc::clone(&port.config);
    let listed = port
        .store
        .readers
        .query(move |conn| store::active_alarms(conn, &config))
        .await
        .map_err(|e| AckFailure::Internal(e.to_string()))?;
    let targets = targets(&port.config, &listed, which)?;
    let ts = now_ms();
    let mut acked = Vec::new();
    for alarm in targets.iter().filter(|a| a["ackedBy"].is_null()) {
        let event_id = alarm["id"].as_str().unwrap_or_default().to_string();
        let (reply, result) = oneshot::channel();
        let cmd = StoreCmd::Ack {
            event_id: event_id.clone(),
            user: user.to_string(),
            ts,
            reply,
        };
        let gone = || AckFailure::Internal("store is not running".into());
        if !port.store.send(cmd).await {
            return Err(gone());
        }
        match result.await {
            Ok(Ok(())) => {}
            // Acknowledged meanwhile by someone else: nothing to do.
            Ok(Err(AckError::NotFound(_))) => continue,
            Ok(Err(e)) => return Err(AckFailure::Internal(e.to_string())),
            Err(_) => return Err(gone()),
        }
        tracing::info!(user, event_id, comment, "alarm acknowledged");
        ack_event(port, alarm, user, comment, ts).await;
        acked.push(event_id);
    }
    Ok(Acked { acked, ts })
}

fn targets(config: &Config, listed: &[Json], which: Which) -> Result<Vec<Json>, AckFailure> {
    let by_id = |id: &str| {
        listed
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .ok_or_else(|| AckFailure::NotFound(format!("no alarm for event `{id}`")))
    };
    Ok(match which {
        Which::One(id) => vec![by_id(&id)?],
        Which::Many(mut ids) => {
            // An id repeated counts once: one id ×4,000 was acknowledged 4,000 times, each an
            // event pushed and synced.
            let mut seen = std::collections::HashSet::new();
            ids.retain(|id| seen.insert(id.clone()));
            ids.iter().map(|id| by_id(id)).collect::<Result<_, _>>()?
        }
        Which::Device(device) => {
            if !config.devices.iter().any(|d| d.id == device)
                && !config.buses.iter().any(|b| b.name == device)
            {
                return Err(AckFailure::NotFound(format!("unknown device `{device}`")));
            }
            listed
                .iter()
                .filter(|a| a["deviceId"] == device.as_str() && a["ackedBy"].is_null())
                .cloned()
                .collect()
        }
    })
}

/// The acknowledgement as an `info` event of the alarm's device, point and type.
async fn ack_event(port: &AckPort, alarm: &Json, user: &str, comment: &str, ts: i64) {
    let config = &port.config;
    // A device's alarm, or a bus's own (`bus_offline`), whose events carry the bus's name.
    let Some(device) = config
        .devices
        .iter()
        .position(|d| alarm["deviceId"] == d.id.as_str())
        .or_else(|| {
            config
                .buses
                .iter()
                .position(|b| alarm["deviceId"] == b.name.as_str())
                .map(|b| config.bus_source(b))
        })
    else {
        return;
    };
    let point = config.devices.get(device).and_then(|d| {
        d.points
            .iter()
            .position(|p| alarm["pointId"] == p.id.as_str())
    });
    let Some(kind) = alarm["type"].as_str().and_then(EventType::parse) else {
        return;
    };
    let id = alarm["id"].as_str().unwrap_or_default();
    let message = if comment.is_empty() {
        format!("acknowledged by {user} (alarm {id})")
    } else {
        format!("acknowledged by {user}: {comment} (alarm {id})")
    };
    if let Some(events) = &port.operator {
        events
            .send(Draft {
                device,
                point,
                kind,
                priority: Priority::Normal,
                value: None,
                message,
                state: EventState::Info,
                ts,
                alarm: Some(AlarmOp::Acked {
                    event: id.to_string(),
                    by: user.to_string(),
                }),
                at: tokio::time::Instant::now(),
            })
            .await;
    }
}
