//! `system.stats`, `system.diagnostics`, `system.log`.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::config::Role;
use crate::model::rfc3339;
use crate::state;

pub async fn stats(ctx: Ctx) -> HandlerResult {
    let s = &ctx.shared;
    let (online, total) = {
        let live = state::read(&s.live);
        (live.online_count(), live.devices.len())
    };
    let mut stats = json!({
        "gatewayId": s.config.gateway.id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeS": s.started.elapsed().as_secs(),
        "devices": {"online": online, "total": total},
        "clients": s.metrics.push.clients.load(std::sync::atomic::Ordering::Relaxed),
        "pushIntervalMs": s.push_interval.borrow().as_millis() as u64,
        "storeHealthy": s.store.healthy.load(std::sync::atomic::Ordering::Relaxed),
        "rssBytes": crate::metrics::rss_bytes(),
    });
    // Who is connected is for admins: a viewer sees the figures, not the others' addresses.
    if ctx.client.login().is_some_and(|l| l.role == Role::Admin) {
        stats["connections"] = connections(&ctx);
    }
    Ok(stats)
}

/// `system.log` (admin): the last `lines` (1..=500, default 100) log lines, oldest first.
pub async fn log(ctx: Ctx) -> HandlerResult {
    let n = ctx.int_or("lines", 100)?;
    if !(1..=500).contains(&n) {
        return Err(ServiceError::bad_request("param `lines` must be 1..=500"));
    }
    Ok(json!({ "lines": crate::logs::last(n as usize) }))
}

/// `system.diagnostics`: the diagnostics view's figures; admins also get addresses and errors.
pub async fn diagnostics(ctx: Ctx) -> HandlerResult {
    let admin = ctx.client.login().is_some_and(|l| l.role == Role::Admin);
    Ok(crate::api::diagnostics::report(&ctx.shared, admin))
}

/// Every open connection: its user (null before a login), address, since when, its queue now
/// against its capacity, pushes sent and dropped, and the snapshot period it gets.
fn connections(ctx: &Ctx) -> serde_json::Value {
    let base = *ctx.shared.push_interval.borrow();
    ctx.shared
        .hub
        .connections()
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "user": c.login().map(|l| l.user),
                "addr": c.remote.map(|r| r.to_string()),
                "since": rfc3339(c.connected_at),
                "queue": c.queued(),
                "capacity": c.capacity(),
                "sent": c.sent.load(Relaxed),
                "dropped": c.dropped.load(Relaxed),
                "snapshotMs": (base * c.snapshot_factor()).as_millis() as u64,
            })
        })
        .collect()
}
