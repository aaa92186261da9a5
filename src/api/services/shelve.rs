//! ISA-18.2 shelving over the WebSocket (admin): `alarms.shelve` and `alarms.unshelve`, each an
//! `info` event and an audit row; the task that brings expired shelvings back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

use super::read_store;
use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::api::Shared;
use crate::config::Priority;
use crate::events::{Draft, EventState, EventType};
use crate::model::{now_ms, rfc3339, Millis};
use crate::shelves::{Shelf, Target, MAX_S};
use crate::store;

/// The longest comment kept.
const MAX_COMMENT: usize = 500;

/// The target of `eventId` (the alarm it raised, by its key), or of `deviceId` [+ `pointId`];
/// the source and point its events go under, and the type the alarm is of (for an alarm).
async fn target(ctx: &Ctx) -> Result<(Target, usize, Option<usize>), ServiceError> {
    let config = &ctx.shared.config;
    if let Some(id) = ctx.opt_string("eventId")? {
        let listed = read_store(ctx, store::active_alarms).await?;
        let alarm = listed
            .iter()
            .find(|a| a["id"] == id.as_str())
            .ok_or_else(|| ServiceError::not_found(format!("no alarm raised by event `{id}`")))?;
        let device = alarm["deviceId"].as_str().unwrap_or_default();
        let source = config
            .devices
            .iter()
            .position(|d| d.id == device)
            .or_else(|| {
                config
                    .buses
                    .iter()
                    .position(|b| b.name == device)
                    .map(|b| config.bus_source(b))
            })
            .unwrap_or_else(|| config.gateway_source());
        let point = config.devices.get(source).and_then(|d| {
            d.points
                .iter()
                .position(|p| alarm["pointId"] == p.id.as_str())
        });
        let key = alarm["alarmKey"].as_str().unwrap_or_default().to_string();
        return Ok((Target::Alarm(key), source, point));
    }
    let device = ctx.string("deviceId")?;
    let d = ctx.device(&device)?;
    match ctx.opt_string("pointId")? {
        Some(p) => {
            let pi = ctx.point(d, &p)?;
            Ok((Target::Point(device, p), d, Some(pi)))
        }
        None => Ok((Target::Device(device), d, None)),
    }
}

fn comment(ctx: &Ctx) -> Result<String, ServiceError> {
    let c = ctx.opt_string("comment")?.unwrap_or_default();
    if c.chars().count() > MAX_COMMENT {
        return Err(ServiceError::bad_request(format!(
            "param `comment` is over {MAX_COMMENT} characters"
        )));
    }
    Ok(c)
}

/// The `info` event and the audit row of a shelving or its end.
async fn record(
    shared: &Shared,
    kind: EventType,
    (source, point): (usize, Option<usize>),
    user: &str,
    message: String,
) {
    let ts = now_ms();
    let audit = store::Audit {
        ts,
        user: user.to_string(),
        source: "ws".into(),
        device_id: shared.config.source_id(source).to_string(),
        point_id: crate::store::AUDIT_SHELVE.into(),
        old: None,
        new: crate::model::Value::Text(message.clone()),
        result: "ok".into(),
    };
    shared.store.send(store::StoreCmd::Audit(audit)).await;
    if let Some(events) = shared.operator_events.as_ref() {
        events
            .send(Draft {
                device: source,
                point,
                kind,
                priority: Priority::Normal,
                value: None,
                message,
                state: EventState::Info,
                ts,
                alarm: None,
                at: tokio::time::Instant::now(),
            })
            .await;
    }
}

/// `alarms.shelve` `{eventId | deviceId [+ pointId], durationS (1 … 28,800), comment}`: not
/// notified and listed apart until then; shelving it again replaces the end.
pub async fn shelve(ctx: Ctx) -> HandlerResult {
    let duration = ctx.int("durationS")?;
    let secs = u64::try_from(duration)
        .ok()
        .filter(|s| (1..=MAX_S).contains(s))
        .ok_or_else(|| {
            ServiceError::bad_request(format!("param `durationS` must be 1 … {MAX_S} (8 h)"))
        })?;
    let comment = comment(&ctx)?;
    let (target, source, point) = target(&ctx).await?;
    let user = ctx.client.login().map_or_else(String::new, |l| l.user);
    let at = now_ms();
    let until = at + Millis::try_from(secs).unwrap_or(0) * 1000;
    let shelf = Shelf {
        until,
        by: user.clone(),
        comment: comment.clone(),
        at,
    };
    ctx.shared
        .shelves
        .shelve(&target, shelf)
        .map_err(|e| ServiceError::new(503, format!("cannot keep the shelving: {e}")))?;
    let why = if comment.is_empty() {
        String::new()
    } else {
        format!(": {comment}")
    };
    let message = format!("{target} shelved by {user} until {}{why}", rfc3339(until));
    record(
        &ctx.shared,
        EventType::AlarmShelved,
        (source, point),
        &user,
        message,
    )
    .await;
    Ok(json!({ "shelved": target.to_string(), "shelvedUntil": rfc3339(until), "shelvedBy": user }))
}

/// `alarms.unshelve` `{eventId | deviceId [+ pointId]}`: back at once.
pub async fn unshelve(ctx: Ctx) -> HandlerResult {
    let (target, source, point) = target(&ctx).await?;
    let user = ctx.client.login().map_or_else(String::new, |l| l.user);
    let was = ctx
        .shared
        .shelves
        .unshelve(&target)
        .map_err(|e| ServiceError::new(503, format!("cannot keep the shelving: {e}")))?
        .ok_or_else(|| ServiceError::not_found(format!("{target} is not shelved")))?;
    let message = format!("{target} unshelved by {user} (shelved by {})", was.by);
    record(
        &ctx.shared,
        EventType::AlarmUnshelved,
        (source, point),
        &user,
        message,
    )
    .await;
    Ok(json!({ "unshelved": target.to_string() }))
}

/// `alarms.active`'s lists: the alarms not shelved, and those shelved, each with
/// `shelvedUntil`, `shelvedBy` and `shelvedComment`.
pub fn split(shared: &Shared, alarms: Vec<Json>) -> (Vec<Json>, Vec<Json>) {
    let now = now_ms();
    let (mut active, mut shelved) = (Vec::new(), Vec::new());
    for mut a in alarms {
        let covering = shared.shelves.covering(
            a["alarmKey"].as_str().unwrap_or_default(),
            a["deviceId"].as_str().unwrap_or_default(),
            a["pointId"].as_str(),
            now,
        );
        match covering {
            Some((target, s)) => {
                // What `alarms.unshelve` takes to bring it back.
                a["shelvedAs"] = match &target {
                    Target::Alarm(_) => json!({ "eventId": a["id"] }),
                    Target::Device(d) => json!({ "deviceId": d }),
                    Target::Point(d, p) => json!({ "deviceId": d, "pointId": p }),
                };
                a["shelvedUntil"] = json!(rfc3339(s.until));
                a["shelvedBy"] = json!(s.by);
                a["shelvedComment"] = json!(s.comment);
                shelved.push(a);
            }
            None => active.push(a),
        }
    }
    (active, shelved)
}

/// Brings shelvings back as they end (checked every second): each an `info` event.
pub async fn expire_shelves(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (target, shelf) in shared.shelves.expire(now_ms()) {
            let config = &shared.config;
            let source = target
                .device()
                .and_then(|d| config.devices.iter().position(|x| x.id == d))
                .unwrap_or_else(|| config.gateway_source());
            let point = match &target {
                crate::shelves::Target::Point(_, p) => config
                    .devices
                    .get(source)
                    .and_then(|d| d.points.iter().position(|x| x.id == *p)),
                _ => None,
            };
            let message = format!("{target} back from the shelf (shelved by {})", shelf.by);
            record(
                &shared,
                EventType::AlarmUnshelved,
                (source, point),
                "expiry",
                message,
            )
            .await;
        }
    }
}
