//! `events.query`, `alarms.active`, `alarms.ack`, `audit.query`.

use serde_json::json;

use super::read_store;
use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::config::Priority;
use crate::events::ack::{acknowledge, AckFailure, AckPort, Which};
use crate::events::EventType;
use crate::store::{self, EventFilter};

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

/// `alarms.ack`: the alarm of `eventId`, of each of `eventIds`, or every one of `deviceId`'s
/// not yet acknowledged; `comment?`. Each acknowledgement is also an `info` event (who and
/// comment) in the log, pushed and synced upstream like any other.
pub async fn ack(ctx: Ctx) -> HandlerResult {
    let comment = ctx.opt_string("comment")?.unwrap_or_default();
    let which = if let Some(id) = ctx.opt_string("eventId")? {
        Which::One(id)
    } else if let Some(ids) = ctx.opt_string_list("eventIds")? {
        Which::Many(ids)
    } else if let Some(device) = ctx.opt_string("deviceId")? {
        Which::Device(device)
    } else {
        return Err(ServiceError::bad_request(
            "give `eventId`, `eventIds` or `deviceId`",
        ));
    };
    let user = ctx.client.login().map(|l| l.user).unwrap_or_default();
    let port = AckPort {
        config: ctx.shared.config.clone(),
        store: ctx.shared.store.clone(),
        operator: ctx.shared.operator_events.clone(),
    };
    let done = acknowledge(&port, which, &user, &comment)
        .await
        .map_err(|e| match e {
            AckFailure::BadRequest(m) => ServiceError::bad_request(m),
            AckFailure::NotFound(m) => ServiceError::not_found(m),
            AckFailure::Internal(m) => ServiceError::internal(m),
        })?;
    let mut out = json!({
        "acked": done.acked,
        "ackedBy": user,
        "ackedAt": crate::model::rfc3339(done.ts),
        "comment": comment,
    });
    if let [one] = done.acked.as_slice() {
        out["eventId"] = json!(one);
    }
    Ok(out)
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
