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

/// The addresses a config listens on below port 1024, each with its key: binding them needs
/// `CAP_NET_BIND_SERVICE`.
pub fn low_ports(config: &Config) -> Vec<(&'static str, String)> {
    let mut low = Vec::new();
    let port = |a: &str| a.parse::<std::net::SocketAddr>().ok().map(|a| a.port());
    if port(&config.http.listen).is_some_and(|p| p < 1024) {
        low.push(("http.listen", config.http.listen.clone()));
    }
    if config.opcua.enabled && port(&config.opcua.listen).is_some_and(|p| p < 1024) {
        low.push(("opcua.listen", config.opcua.listen.clone()));
    }
    let m = &config.modbus_server;
    if m.enabled && m.listen.port() < 1024 {
        low.push(("modbus_server.listen", m.listen.to_string()));
    }
    low
}

/// A refused bind of a port below 1024, with how the packaged unit comes to allow it.
pub fn low_port_hint(e: std::io::Error, port: u16) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied && port < 1024 {
        std::io::Error::new(
            e.kind(),
            format!(
                "{e}: a port below 1024 needs CAP_NET_BIND_SERVICE; the packaged unit's generator \
                 grants it after `sudo systemctl daemon-reload && sudo systemctl restart edge-gateway`"
            ),
        )
    } else {
        e
    }
}

/// The systemd generator's work (`edge-gateway unit-caps`): a drop-in at `drop_in` granting the
/// service `CAP_NET_BIND_SERVICE` when the config listens below port 1024, and none (removed)
/// otherwise, so the unit holds the capability only while it needs it. A config that does not
/// load grants nothing (the service will not start on it anyway). Returns what it did.
pub fn write_caps_drop_in(
    config: &std::path::Path,
    drop_in: &std::path::Path,
) -> std::io::Result<String> {
    let low = crate::config::load(config)
        .map(|l| low_ports(&l.config))
        .unwrap_or_default();
    if low.is_empty() {
        match std::fs::remove_file(drop_in) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => return Ok("no port below 1024: no capability".into()),
        }
    }
    let named: Vec<String> = low.iter().map(|(k, a)| format!("{k} = {a}")).collect();
    let text = format!(
        "# Written by edge-gateway's systemd generator from {}: {}.\n\
         [Service]\nAmbientCapabilities=CAP_NET_BIND_SERVICE\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        config.display(),
        named.join(", ")
    );
    if let Some(dir) = drop_in.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(drop_in, text)?;
    Ok(format!("CAP_NET_BIND_SERVICE for {}", named.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_config_below_port_1024_is_granted_the_capability() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gateway.toml");
        let drop_in = dir.path().join("d/50-low-ports.conf");
        let head = format!(
            "[gateway]\nid = \"g\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:8080\"\n",
            dir.path().display().to_string()
        );
        std::fs::write(&cfg, &head).unwrap();
        write_caps_drop_in(&cfg, &drop_in).unwrap();
        assert!(!drop_in.exists());
        std::fs::write(
            &cfg,
            format!("{head}[modbus_server]\nenabled = true\nlisten = \"0.0.0.0:502\"\n"),
        )
        .unwrap();
        let did = write_caps_drop_in(&cfg, &drop_in).unwrap();
        assert!(did.contains("modbus_server.listen = 0.0.0.0:502"), "{did}");
        let text = std::fs::read_to_string(&drop_in).unwrap();
        assert!(
            text.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE\n"),
            "{text}"
        );
        // Back above 1024: the grant goes.
        std::fs::write(&cfg, &head).unwrap();
        write_caps_drop_in(&cfg, &drop_in).unwrap();
        assert!(!drop_in.exists());
    }
}
