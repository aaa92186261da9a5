//! `system.stats`.

use serde_json::json;

use crate::state;
use crate::ws::context::{Ctx, HandlerResult};

pub async fn stats(ctx: Ctx) -> HandlerResult {
    let s = &ctx.shared;
    let (online, total) = {
        let live = state::read(&s.live);
        (live.online_count(), live.devices.len())
    };
    Ok(json!({
        "gatewayId": s.config.gateway.id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeS": s.started.elapsed().as_secs(),
        "devices": {"online": online, "total": total},
        "clients": s.metrics.push.clients.load(std::sync::atomic::Ordering::Relaxed),
        "pushIntervalMs": s.push_interval.borrow().as_millis() as u64,
        "storeHealthy": s.store.healthy.load(std::sync::atomic::Ordering::Relaxed),
        "rssBytes": crate::metrics::rss_bytes(),
    }))
}
