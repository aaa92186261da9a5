//! `subscribe` (with `batchMs`: normal events merged) and `push.setInterval` (kept in the store).

use std::time::Duration;

use serde_json::json;

use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::config::Priority;
use crate::events::EventType;
use crate::ws::hub::Subscription;

pub async fn subscribe(ctx: Ctx) -> HandlerResult {
    let devices = match ctx.opt_string_list("deviceIds")? {
        None => None,
        Some(ids) => {
            // Each id once: a repeated id would be indexed (and pushed) once per copy.
            let known = ctx.shared.config.devices.len();
            if ids.len() > known {
                return Err(ServiceError::bad_request(format!(
                    "param `deviceIds`: {} ids, more than the {known} devices there are",
                    ids.len()
                )));
            }
            let mut devices = ids
                .iter()
                .map(|id| ctx.device(id))
                .collect::<Result<Vec<_>, _>>()?;
            devices.sort_unstable();
            devices.dedup();
            Some(devices)
        }
    };
    let event_mask = match ctx.opt_string_list("eventTypes")? {
        None => u32::MAX,
        Some(types) => types.iter().try_fold(0u32, |mask, t| {
            EventType::parse(t)
                .map(|e| mask | e.bit())
                .ok_or_else(|| ServiceError::bad_request(format!("unknown event type `{t}`")))
        })?,
    };
    let min_priority = match ctx.opt_string("minPriority")? {
        None => Priority::Normal,
        Some(p) => Priority::parse(&p).ok_or_else(|| {
            ServiceError::bad_request(format!(
                "param `minPriority`: unknown priority `{p}` (normal, high, emergency)"
            ))
        })?,
    };
    let telemetry = ctx.bool_or("telemetry", true)?;
    let batch_ms = match ctx.opt_int("batchMs")? {
        None | Some(0) => 0,
        Some(ms) if (MIN_BATCH_MS..=MAX_BATCH_MS).contains(&ms) => ms as u32,
        Some(_) => {
            return Err(ServiceError::bad_request(format!(
                "param `batchMs` must be 0 (off) or {MIN_BATCH_MS}..={MAX_BATCH_MS}"
            )))
        }
    };
    let sub = Subscription {
        devices,
        event_mask,
        min_priority,
        telemetry,
        batch_ms,
    };
    if !ctx.shared.hub.subscribe(ctx.client.id, sub) {
        return Err(ServiceError::new(401, "not logged in"));
    }
    Ok(json!({}))
}

/// `subscribe`'s `batchMs`: normal events merged into one `push.events` at most this often.
pub const MIN_BATCH_MS: i64 = 50;
pub const MAX_BATCH_MS: i64 = 5000;

pub const MIN_INTERVAL_MS: i64 = 500;
pub const MAX_INTERVAL_MS: i64 = 3_600_000;

pub async fn set_interval(ctx: Ctx) -> HandlerResult {
    let ms = ctx.int("intervalMs")?;
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) {
        return Err(ServiceError::bad_request(format!(
            "param `intervalMs` must be {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}"
        )));
    }
    ctx.shared
        .push_interval
        .send_replace(Duration::from_millis(ms as u64));
    // Kept across a restart or a reload, until the config's own interval changes.
    let config_ms = ctx.shared.config.push.interval.as_millis() as i64;
    if !ctx
        .shared
        .store
        .send(crate::store::StoreCmd::PushInterval { ms, config_ms })
        .await
    {
        return Err(ServiceError::internal("the store is not running"));
    }
    tracing::info!(user = ?ctx.client.login().map(|l| l.user), "push interval set to {ms} ms");
    Ok(json!({ "intervalMs": ms }))
}
