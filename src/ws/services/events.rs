//! `events.query`, `alarms.active`, `alarms.ack`.

use serde_json::json;
use tokio::sync::oneshot;

use super::read_store;
use crate::config::Priority;
use crate::events::EventType;
use crate::model::now_ms;
use crate::store::{self, AckError, EventFilter, StoreCmd};
use crate::ws::context::{Ctx, HandlerResult, ServiceError};

pub async fn query(ctx: Ctx) -> HandlerResult {
    let device_id = ctx.opt_string("deviceId")?;
    if let Some(d) = &device_id {
        ctx.device(d)?;
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

pub async fn active(ctx: Ctx) -> HandlerResult {
    let alarms = read_store(&ctx, store::active_alarms).await?;
    Ok(json!({ "alarms": alarms }))
}

pub async fn ack(ctx: Ctx) -> HandlerResult {
    let event_id = ctx.string("eventId")?;
    let user = ctx.client.login().map(|l| l.user).unwrap_or_default();
    let (reply, result) = oneshot::channel();
    let ts = now_ms();
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
        Ok(Ok(())) => {
            tracing::info!(user, event_id, "alarm acknowledged");
            Ok(json!({"eventId": event_id, "ackedBy": user, "ackedAt": crate::model::rfc3339(ts)}))
        }
        Ok(Err(AckError::NotFound(_))) => Err(ServiceError::not_found(format!(
            "no alarm for event `{event_id}`"
        ))),
        Ok(Err(e)) => Err(ServiceError::internal(e.to_string())),
        Err(_) => Err(ServiceError::internal("store is not running")),
    }
}
