//! The retained `state` message (SPEC "Fleet over the broker") built from the gateway's own
//! figures, renewed every 60 s and at once when what a fleet engineer watches changes; the MQTT
//! sink publishes it whatever its format.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use super::hex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::versions::ConfigFile;
use crate::config::Config;
use crate::metrics::sinks::Sinks;
use crate::state::SharedLive;
use crate::store::StoreHandle;

/// What the `state` message is made of: the gateway's own figures, none of the HTTP side.
pub struct Sources {
    pub config: Arc<Config>,
    pub live: SharedLive,
    pub store: StoreHandle,
    pub sinks: Sinks,
    /// The file the gateway runs from, for the config's version and digest.
    pub config_file: Option<Arc<ConfigFile>>,
}

/// A `state` is published at least this often.
const EVERY: Duration = Duration::from_secs(60);
/// How often the figures are looked at for a change.
const LOOK: Duration = Duration::from_secs(1);

/// What makes a new `state` go out at once: devices online, the alarms, the sinks' health, the
/// config version. Backlogs and sizes move all the time and ride along with the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    online: usize,
    alarms: (u64, u64, u64),
    sinks_ok: Vec<bool>,
}

/// The config as the fleet compares it: the version the dashboard's history gave it (none for
/// a gateway started without a file) and the SHA-256 of its text.
#[derive(Debug, Clone, Default)]
pub struct ConfigId {
    pub version: Option<u64>,
    pub sha256: Option<String>,
}

impl ConfigId {
    /// Of the file the gateway runs from: its text now, and the newest recorded version.
    pub fn of(file: Option<&ConfigFile>) -> ConfigId {
        let Some(file) = file else {
            return ConfigId::default();
        };
        let sha256 = std::fs::read(&file.path)
            .ok()
            .map(|text| hex(&Sha256::digest(text)));
        let version = file
            .versions
            .list()
            .ok()
            .and_then(|v| v.iter().map(|x| x.id).max());
        ConfigId { version, sha256 }
    }
}

/// Active alarms, of those not acknowledged, and active emergencies, from the store (a small
/// query on one of its read connections, off the runtime's threads).
async fn alarm_counts(store: &StoreHandle) -> (u64, u64, u64) {
    let counted = store
        .readers
        .query_for(crate::store::Lane::Short, "fleet", |conn| {
            crate::store::alarm_counts(conn)
        })
        .await;
    counted.unwrap_or_default()
}

/// Free bytes on the data directory's filesystem, for an unprivileged user.
#[allow(clippy::useless_conversion, reason = "the fields are 32-bit on armv7")]
fn disk_free(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &raw mut st) } != 0 {
        return None;
    }
    Some(u64::from(st.f_bavail) * u64::from(st.f_frsize))
}

/// The `state` payload and the key that decides when the next must go.
fn state(from: &Sources, config: &ConfigId, conn_alarms: (u64, u64, u64)) -> (Key, Json) {
    let live = crate::state::read(&from.live);
    let online = live.online_count();
    let total = live.devices.len();
    drop(live);
    let sinks = from.sinks.configured(&from.config);
    let sinks_ok: Vec<bool> = sinks.iter().map(|(_, s)| s.error().is_none()).collect();
    let backlog = |name: &str| {
        sinks
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| json!({ "backlog": s.backlog.load(Relaxed) }))
    };
    let dir = &from.config.gateway.data_dir;
    let (db, wal) = crate::store::file_sizes(dir);
    let (active, unacked, emergency) = conn_alarms;
    let payload = json!({
        "ts": crate::model::rfc3339(crate::model::now_ms()),
        "version": env!("CARGO_PKG_VERSION"),
        "git": crate::build_info::GIT,
        "uptimeS": crate::process_started().elapsed().as_secs(),
        "config": { "version": config.version, "sha256": config.sha256 },
        "devices": { "online": online, "total": total },
        "alarms": { "active": active, "unacked": unacked, "emergency": emergency },
        "sinks": { "mysql": backlog("mysql"), "mqtt": backlog("mqtt") },
        "store": {
            "dbBytes": db,
            "walBytes": wal,
            "capBytes": from.config.store.max_db_mb * 1024 * 1024,
        },
        "diskFreeBytes": disk_free(dir),
        "clockSynced": crate::clock::synchronised(),
    });
    let key = Key {
        online,
        alarms: conn_alarms,
        sinks_ok,
    };
    (key, payload)
}

/// Keeps `tx` holding the latest `state` text: a new one at once on a change of the key, and
/// every 60 s regardless. Runs until `cancel`.
pub async fn publish_states(
    from: Sources,
    tx: watch::Sender<Option<Arc<str>>>,
    cancel: CancellationToken,
) {
    let config = ConfigId::of(from.config_file.as_deref());
    let mut last: Option<(Key, tokio::time::Instant)> = None;
    let mut look = tokio::time::interval(LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = look.tick() => {}
        }
        let alarms = alarm_counts(&from.store).await;
        let (key, payload) = state(&from, &config, alarms);
        let due = last
            .as_ref()
            .is_none_or(|(k, at)| *k != key || at.elapsed() >= EVERY);
        if due {
            tx.send_replace(Some(payload.to_string().into()));
            last = Some((key, tokio::time::Instant::now()));
        }
    }
}
