//! `events.query`, `alarms.active`, `alarms.ack`, `audit.query`.

use serde_json::json;
use tokio::sync::oneshot;

use super::read_store;
use crate::config::Priority;
use crate::events::{Draft, EventState, EventType};
use crate::model::event::AlarmOp;
use crate::model::now_ms;
use crate::store::{self, AckError, EventFilter, StoreCmd};
use crate::ws::context::{Ctx, HandlerResult, ServiceError};

pub async fn query(ctx: Ctx) -> HandlerResult {
    let device_id = ctx.opt_string("deviceId")?;
    if let Some(d) = &device_id {
        // A bus's own events (`bus_offline`) carry the bus's name, the gateway's its id.
        if ctx.bus(d).is_err() && *d != ctx.shared.config.gateway.id {
            ctx.device(d)?;
        }
    }
    let kind = ctx.opt_string("type")?;
    if let Some(t) = &kind {
        EventType::parse(t).ok_or_else(|| {
            ServiceError::bad_request(format!("param `type`: unknown event type `{t}`"))
        })?;
    }
    let min_priority_rank = match ctx.opt_string("minPriority")? {
        None => 0,
        Some(p) => Priority::rank(Priority::parse(&p).ok_or_else(|| {
            ServiceError::bad_request(format!("param `minPriority`: unknown priority `{p}`"))
        })?),
    };
    let since = ctx.opt_time("since")?;
    let limit = ctx.int_or("limit", 100)?;
    if !(1..=1000).contains(&limit) {
        return Err(ServiceError::bad_request("param `limit` must be 1..=1000"));
    }
    let before = ctx.opt_string("before")?;
    let filter = EventFilter {
        device_id,
        kind,
        min_priority_rank,
        since,
        before_seq: None,
        limit: limit as usize,
    };
    let events = read_store(&ctx, move |conn, config| {
        let mut f = filter;
        if let Some(b) = before {
            // Paging: events older than the given one (an unknown id pages from the start).
            f.before_seq = store::event_seq(conn, &b)?;
        }
        store::query_events(conn, config, &f)
    })
    .await?;
    // The id to pass as `before` for the next page, when this page was full.
    let next = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e["id"].clone()))
        .flatten();
    Ok(json!({ "events": events, "next": next }))
}

/// `alarms.active`: the alarms, and apart the shelved ones (with `shelvedUntil`, `shelvedBy`).
pub async fn active(ctx: Ctx) -> HandlerResult {
    let alarms = read_store(&ctx, store::active_alarms).await?;
    let (alarms, shelved) = super::shelve::split(&ctx.shared, alarms);
    Ok(json!({ "alarms": alarms, "shelved": shelved }))
}

/// The longest acknowledgement comment kept.
const MAX_COMMENT: usize = 500;

/// `alarms.ack`: the alarm of `eventId`, of each of `eventIds`, or every one of `deviceId`'s
/// not yet acknowledged; `comment?`. Each acknowledgement is also an `info` event (who and
/// comment) in the log, pushed and synced upstream like any other.
pub async fn ack(ctx: Ctx) -> HandlerResult {
    let comment = ctx.opt_string("comment")?.unwrap_or_default();
    if comment.chars().count() > MAX_COMMENT {
        return Err(ServiceError::bad_request(format!(
            "param `comment` is over {MAX_COMMENT} characters"
        )));
    }
    let listed = read_store(&ctx, store::active_alarms).await?;
    let by_id = |id: &str| listed.iter().find(|a| a["id"] == id).cloned();
    let targets: Vec<serde_json::Value> = if let Some(id) = ctx.opt_string("eventId")? {
        vec![by_id(&id)
            .ok_or_else(|| ServiceError::not_found(format!("no alarm for event `{id}`")))?]
    } else if let Some(mut ids) = ctx.opt_string_list("eventIds")? {
        // An id repeated counts once: one id ×4,000 was acknowledged 4,000 times, each an
        // event pushed and synced.
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        let mut out = Vec::new();
        for id in &ids {
            out.push(
                by_id(id)
                    .ok_or_else(|| ServiceError::not_found(format!("no alarm for event `{id}`")))?,
            );
        }
        out
    } else if let Some(device) = ctx.opt_string("deviceId")? {
        if ctx.bus(&device).is_err() {
            ctx.device(&device)?;
        }
        listed
            .iter()
            .filter(|a| a["deviceId"] == device.as_str() && a["ackedBy"].is_null())
            .cloned()
            .collect()
    } else {
        return Err(ServiceError::bad_request(
            "give `eventId`, `eventIds` or `deviceId`",
        ));
    };
    let user = ctx.client.login().map(|l| l.user).unwrap_or_default();
    let ts = now_ms();
    let mut acked = Vec::new();
    // One acknowledgement per alarm: one already acknowledged is not acknowledged again.
    for alarm in targets.iter().filter(|a| a["ackedBy"].is_null()) {
        let event_id = alarm["id"].as_str().unwrap_or_default().to_string();
        let (reply, result) = oneshot::channel();
        let cmd = StoreCmd::Ack {
            event_id: event_id.clone(),
            user: user.clone(),
            ts,
            reply,
        };
        if !ctx.shared.store.send(cmd).await {
            return Err(ServiceError::internal("store is not running"));
        }
        match result.await {
            Ok(Ok(())) => {}
            // Acknowledged meanwhile by someone else: nothing to do.
            Ok(Err(AckError::NotFound(_))) => continue,
            Ok(Err(e)) => return Err(ServiceError::internal(e.to_string())),
            Err(_) => return Err(ServiceError::internal("store is not running")),
        }
        tracing::info!(user, event_id, comment, "alarm acknowledged");
        ack_event(&ctx, alarm, &user, &comment, ts).await;
        acked.push(event_id);
    }
    let mut out = json!({
        "acked": acked,
        "ackedBy": user,
        "ackedAt": crate::model::rfc3339(ts),
        "comment": comment,
    });
    if let [one] = acked.as_slice() {
        out["eventId"] = json!(one);
    }
    Ok(out)
}

/// The acknowledgement as an `info` event of the alarm's device, point and type.
async fn ack_event(ctx: &Ctx, alarm: &serde_json::Value, user: &str, comment: &str, ts: i64) {
    let config = &ctx.shared.config;
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
    if let Some(events) = ctx.shared.operator_events.get() {
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

/// `audit.query`: writes and config applies, newest first; `limit` (1..=500, default 50) and
/// `before` (an entry id) for paging; data `{"entries": [...], "next": id-or-null}`.
pub async fn audit(ctx: Ctx) -> HandlerResult {
    let limit = ctx.int_or("limit", 50)?;
    if !(1..=500).contains(&limit) {
        return Err(ServiceError::bad_request("param `limit` must be 1..=500"));
    }
    let before = ctx.opt_int("before")?;
    let entries = read_store(&ctx, move |conn, config| {
        store::audit_page(conn, config, before, limit as usize)
    })
    .await?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e["id"].clone()))
        .flatten();
    Ok(json!({ "entries": entries, "next": next }))
}
