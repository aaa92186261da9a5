//! systemd integration: `READY=1` once the gateway serves, `STOPPING=1` at shutdown, and a
//! watchdog that pings only while every bus, the pipeline and the store writer make progress.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call here does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::StoreHandle;

pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

pub fn reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

/// How long the pipeline may go without a beat: it ticks every 100 ms.
const PIPELINE_STALL: Duration = Duration::from_secs(5);

/// What is stuck, if anything: a bus without a progress stamp past its limit, the pipeline, or
/// a store writer that does not answer a flush within `store_limit`.
pub async fn stalled(
    config: &Config,
    metrics: &Metrics,
    store: &StoreHandle,
    store_limit: Duration,
) -> Option<String> {
    let beats = &metrics.beats;
    for (b, bus) in config.buses.iter().enumerate() {
        let age = beats.age(&beats.buses[b]);
        if age > crate::modbus::bus::stall_limit(bus) {
            return Some(format!("bus `{}` made no progress for {age:?}", bus.name));
        }
    }
    let age = beats.age(&beats.pipeline);
    if age > PIPELINE_STALL {
        return Some(format!("the pipeline made no progress for {age:?}"));
    }
    if tokio::time::timeout(store_limit, store.flush())
        .await
        .is_err()
    {
        return Some(format!(
            "the store writer did not answer within {store_limit:?}"
        ));
    }
    None
}

/// Pings systemd every half `WatchdogSec` while nothing is stalled; when something is, says
/// what in the log and stops pinging, so systemd restarts the service.
pub async fn watchdog(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    store: StoreHandle,
    cancel: CancellationToken,
) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = period / 2;
    tracing::info!(
        "systemd watchdog every {period:?}: pinging every {every:?} while making progress"
    );
    let mut was_stalled = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match stalled(&config, &metrics, &store, every / 2).await {
            None => {
                if was_stalled {
                    tracing::info!("watchdog: progress again, pinging systemd");
                }
                was_stalled = false;
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            Some(why) => {
                if !was_stalled {
                    tracing::error!("watchdog: not pinging systemd: {why}");
                }
                was_stalled = true;
            }
        }
    }
}
