//! edge-gateway: polls Modbus devices, keeps their state in SQLite and serves it on the LAN.
//!
//! # Layout
//!
//! Data flows one way: bus poller → pipeline (state, rules) → store (SQLite) → sinks, with the
//! pipeline and the event processor handing pushes to `api::push`.
//!
//! - [`config`]: TOML → raw types → validated domain types, problems with key path and line.
//! - [`model`]: the vocabulary every stage shares: values, quality, timestamps, point formats
//!   and events. It imports nothing of the crate's own; no module imports one that imports
//!   it back (`scripts/check-layers`).
//! - [`backoff`]: exponential backoff with jitter, for every retry loop.
//! - [`build_info`]: the version and git commit the binary was built from.
//! - [`sync`]: locks used as they are after a panic elsewhere (one idiom, written once).
//! - [`fair`]: places shared fairly between peer addresses (the dashboard's sockets not logged
//!   in, HTTP connections): the greediest address gives way to a newcomer.
//! - [`modbus`]: codec (types, byte/word order, scale), read planner, bus scheduler (one task per
//!   link), the client link with deadlines and backoff, the RTU client framing (silences, CRC),
//!   a master's requests as a server reads them, the raw words kept for a server's mirror,
//!   server framing, and the simulator.
//! - [`gateway`]: starts every stage from a valid config, reloads it as a difference, stops it
//!   with the store flushed last.
//! - [`pipeline`]: bus events → rules → live state → calculated points → pushes and the store.
//! - [`expr`]: the expression language of calculated points and `expr` rules (names resolved
//!   against the config, types checked, a stack program over `f64`).
//! - [`calc`]: calculated points and `expr` rules evaluated when an input changes, in order
//!   through chains, quality the worst of the inputs'.
//! - [`state`]: the live state of every point and the report-on-change decision.
//! - [`store`]: SQLite schema and migrations, the writer thread with group commits, compact
//!   history (one row per device sample), restore at start, retention, the size cap, a bounded
//!   WAL, event numbers reserved ahead of a lost store, and the outbox the sinks read as typed
//!   rows (the telemetry just committed from memory, `store::tail`).
//! - [`events`]: the rule engine (thresholds, rate, stale, abnormal, online/offline), and the
//!   processor that orders events by priority, limits storms, numbers, commits and pushes them.
//! - [`sinks`]: upstream store-and-forward: each sink reads the SQLite outbox after its cursor
//!   and advances it only after its upstream confirmed (a MySQL commit, an MQTT PUBACK); MQTT
//!   in SPEC's JSON topics or as a Sparkplug B edge node.
//! - [`ws`]: the WebSocket plumbing: the handshake and the split socket, each connection's
//!   writer (heartbeats, bounded writes), the client hub with bounded push queues, admission
//!   (Host/Origin, connection caps).
//! - [`api`]: the dashboard's API over it: the request loop, sessions and logins, roles,
//!   services, what is pushed (`api::push`), diagnostics, and the handlers' context
//!   (`api::shared`, which `/healthz` and `/metrics` read too).
//! - [`opcua`]: the OPC UA server a SCADA reads: the config as an address space, fed from the
//!   pipeline's reports, its users those of the dashboard (cargo feature `opcua`, on by
//!   default; `opcua/off.rs` stands in without it).
//! - [`fleet`]: the retained `state` message a fleet reads over the broker, kept current from
//!   the gateway's own figures; signed rpc and remote config (with its trial and rollback);
//!   the CLI's side of both.
//! - [`modbus_server`]: the Modbus TCP server PLCs, HMIs and older SCADA poll: each unit a
//!   device mirrored from its last raw reads or laid out as floats, writes on the audited
//!   strict path.
//! - [`control`]: operator requests to the buses (audited writes, raw reads) ahead of polls.
//! - [`http`]: `/ws`, `/healthz`, `/metrics` and the dashboard page.
//! - [`health`]: what `/healthz` reports, with every problem that does not stop serving.
//! - [`logs`]: the last log lines in memory, bounded, for `system.log`.
//! - [`shelves`]: alarms an operator shelved (ISA-18.2), until when and why, kept on disk.
//! - [`notify`]: alarm notifications by webhook and e-mail from the store's queue, at least
//!   once, digests in a storm, reminders and escalation.
//! - [`tls`]: TLS as a client with the system's roots, for every upstream dialled.
//! - [`broker`]: an MQTT broker's URL read once (the sink, the fleet, the connection test).
//! - [`host`]: this box's name and interface addresses.
//! - [`log_limit`]: log lines outside parties can trigger, at most one per source per period.
//! - [`metrics`]: counters kept by every stage, rendered for Prometheus.
//! - [`cli`]: the commissioning commands `read` and `write`, `demo`, and every subcommand's body
//!   (`cli::commands`: `main.rs` only parses the command line).
//! - [`probe`]: `run --once` / `check-config --probe`: every device polled once, shown raw and
//!   decoded.
//! - [`account`]: the password prompt and `user add`.

pub mod account;
pub mod api;
pub mod assets;
pub mod backoff;
pub mod broker;
pub mod build_info;
pub mod calc;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod events;
pub mod expr;
pub mod fair;
pub mod fleet;
pub mod gateway;
pub mod health;
pub mod host;
pub mod http;
pub mod log_limit;
pub mod logs;
pub mod metrics;
pub mod modbus;
pub mod modbus_server;
pub mod model;
pub mod notify;
#[cfg(feature = "opcua")]
pub mod opcua;
// Built without the server: the same names, nothing behind them.
#[cfg(not(feature = "opcua"))]
#[path = "opcua/off.rs"]
pub mod opcua;
pub mod pipeline;
pub mod probe;
pub mod service;
pub mod shelves;
pub mod sinks;
pub mod state;
pub mod store;
pub mod sync;
pub mod tls;
pub mod ws;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use api::Shared;
use config::Config;
pub use gateway::{Gateway, ReloadError, ReloadSummary, StartError};
pub use metrics::sinks::Sinks;
use metrics::Reload;

pub use build_info::{GIT, VERSION};

/// When this process started its first gateway: uptime counts from here, not from the last
/// reload.
pub fn process_started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

/// Caps glibc's malloc at two arenas. By default it makes up to eight per core, one per thread
/// that ever allocates, and every one keeps its freed pages: with a connection's buffers
/// allocated and freed on whichever worker ran it, that cost 18 MB of RSS at 1,000 WebSocket
/// clients (65.6 → 47.5 MB in `cargo bench --bench ws`).
///
/// It also fixes the threshold above which a block is its own mapping, returned to the kernel
/// when freed (4 MiB). glibc raises that threshold to the size of any such block freed (up to
/// 32 MiB), so after the second login argon2id's 19 MiB working memory came from the heap and
/// stayed resident for good (ws bench 47 → 22 MB, MQTT catch-up 55.6 → 21.3 MB). A fixed
/// threshold also stops the trim threshold following it, so that is set too: a 256 KiB
/// threshold with the default 128 KiB trim cost 10–15 % of catch-up throughput, 4 MiB with an
/// 8 MiB trim nothing measurable.
///
/// Call first thing, before any thread exists. Other C libraries (musl) are left as they are.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}

/// Raises the soft limit on open files to the hard one: every connection, link and the store
/// take a descriptor, and the common soft default (1,024) ran out under 1,100 idle connections.
/// Under the systemd unit both are 8,192 already and nothing is called.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const want) != 0 {
                tracing::warn!(
                    "could not raise the open-file limit from {}: {}",
                    lim.rlim_cur,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// The daemon: runs until `shutdown` is cancelled, then stops cleanly. With the config's path,
/// SIGHUP re-reads it: an invalid file is logged and the running config stays; a valid one is
/// applied as a difference ([`Gateway::reload`]).
pub async fn run(
    config: Config,
    path: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    run_with(config, path, shutdown, |_| {}).await
}

/// [`run`], calling `on_ready` once the gateway first serves (the demo prints its URLs).
pub async fn run_with(
    config: Config,
    path: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Gateway),
) -> Result<(), StartError> {
    // The file as the dashboard edits it: its versions, and reloads asked for like SIGHUP.
    let (apply, mut applied) = mpsc::channel(1);
    let file = path.as_ref().map(|p| {
        let versions = config::versions::Versions::new(&config.gateway.data_dir);
        // The file the gateway started with is a version to roll back to.
        if let Err(e) = std::fs::read_to_string(p)
            .and_then(|text| versions.record(&text, "startup", "the file the gateway started with"))
        {
            tracing::warn!("cannot keep the config's version in the data directory: {e}");
        }
        std::sync::Arc::new(config::versions::ConfigFile::new(
            p.clone(),
            versions,
            apply,
        ))
    });
    let config_file = file.clone();
    let carry = file
        .map(gateway::Carry::with_config_file)
        .unwrap_or_default()
        .on_field_thread();
    // Before the line that says the gateway runs: a SIGHUP sent as soon as it is read must
    // reload, not end the process (SIGHUP's default action).
    let mut hup = sighup().await;
    let mut gw = Gateway::start_with(config, carry).await?;
    tracing::info!("gateway running: {}", status(&gw));
    // A Pi has no battery clock: until NTP answers after a boot, every timestamp can be far
    // off. Said once here; `/healthz` keeps saying it in `degraded` while it lasts.
    if clock::synchronised() == Some(false) {
        tracing::warn!(
            "the system clock is not synchronised (no NTP yet?): stored timestamps may be wrong until it is"
        );
    }
    // Config valid, store open, HTTP bound: ready.
    on_ready(&gw);
    service::ready(&status(&gw));
    loop {
        let watchdog_stop = shutdown.child_token();
        let watchdog = tokio::spawn(service::watchdog(
            gw.config.clone(),
            gw.metrics.clone(),
            gw.store.clone(),
            watchdog_stop.clone(),
        ));
        // `Some` for a reload: an apply's asks to be told how it went, a SIGHUP's not.
        let woke = tokio::select! {
            () = shutdown.cancelled() => None,
            _ = hup.recv() => Some(None),
            Some(ask) = applied.recv() => Some(Some(ask)),
        };
        watchdog_stop.cancel();
        let _ = watchdog.await;
        let Some(ask) = woke else { break };
        let Some(path) = &path else { continue };
        service::reloading();
        let (next, result) = reload(gw, path, config_file.as_deref()).await?;
        gw = next;
        if let Some(ask) = ask {
            record_apply(&gw, &ask, &result).await;
            let _ = ask.done.send(result);
        }
        service::ready(&status(&gw));
    }
    tracing::info!("shutting down");
    service::stopping();
    gw.shutdown().await;
    Ok(())
}

/// What a running gateway is, in one line for the log and systemd's status.
fn status(gw: &Gateway) -> String {
    format!(
        "{} buses, {} devices, http on {}",
        gw.config.buses.len(),
        gw.config.devices.len(),
        gw.http_addr
    )
}

/// One SIGHUP (or apply): the file read again; an invalid one is logged and the running config
/// stays, a valid one is applied as a difference, and one that cannot start gives way to the
/// previous config (and an apply's file is put back). Returns the gateway running and, when
/// the file's config is not what runs, why.
async fn reload(
    gw: Gateway,
    path: &std::path::Path,
    file: Option<&config::versions::ConfigFile>,
) -> Result<(Gateway, Result<(), String>), StartError> {
    // An apply's file that cannot start is put back, so the next start runs the old one.
    let settle = |reloaded: bool| {
        match file.map(|f| f.settle(reloaded)) {
        Some(Ok(true)) => tracing::error!(
            "the applied config did not start: the previous file is put back in {}",
            path.display()
        ),
        Some(Err(e)) => tracing::error!(
            "the applied config did not start, and the previous file could not be put back in {}: {e}",
            path.display()
        ),
        _ => {}
    }
    };
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            let why = match e {
                config::ConfigError::Invalid(problems) => {
                    for p in &problems {
                        tracing::error!(
                            "reload refused, the running config stays: {}: {p}",
                            path.display()
                        );
                    }
                    format!("the file has {} problem(s)", problems.len())
                }
                e @ config::ConfigError::Read { .. } => {
                    tracing::error!("reload refused, the running config stays: {e}");
                    e.to_string()
                }
            };
            gw.metrics.count_reload(&gw.metrics, Reload::Refused);
            settle(false);
            return Ok((gw, Err(why)));
        }
    };
    let before = gw.metrics.clone();
    match gw.reload(loaded.config).await {
        Ok((next, summary)) => {
            tracing::info!(
                kept = ?summary.kept,
                restarted = ?summary.restarted,
                added = ?summary.added,
                removed = ?summary.removed,
                "config reloaded: {}",
                status(&next)
            );
            next.metrics.count_reload(&before, Reload::Applied);
            settle(true);
            Ok((next, Ok(())))
        }
        Err(ReloadError { error, running }) => {
            // The new config could not start (its HTTP address is taken, say): the one that
            // ran runs again, its connections kept.
            tracing::error!("reload failed ({error}); the previous config runs again");
            settle(false);
            let gw = running?;
            gw.metrics.count_reload(&before, Reload::Failed);
            Ok((gw, Err(error.to_string())))
        }
    }
}

/// An apply's audit row, with how its reload went, committed before the apply is answered (an
/// audit read after the answer has it).
async fn record_apply(
    gw: &Gateway,
    ask: &config::versions::ReloadAsk,
    result: &Result<(), String>,
) {
    let audit = store::Audit {
        ts: model::now_ms(),
        user: ask.user.clone(),
        source: ask.source.clone(),
        device_id: gw.config.gateway.id.clone(),
        point_id: store::AUDIT_CONFIG.into(),
        old: None,
        new: model::Value::Text(ask.what.clone()),
        result: result
            .as_ref()
            .err()
            .map_or_else(|| "ok".into(), Clone::clone),
    };
    gw.store.send(store::StoreCmd::Audit(audit)).await;
    gw.store.flush().await;
}

/// SIGHUP as a stream, its handler installed when this returns; never fires where there is
/// no such signal.
async fn sighup() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut s) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let _ = tx.try_send(());
                }
            });
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}
