//! The binary's subcommands with their exit codes: `run` (and `run --once`), `demo`,
//! `check-config`, `unit-caps`, `simulate`, `hash-password`, `user add`; the logging and the
//! stop signal they share. `main.rs` parses the command line and calls these.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::{EXIT_LINK, EXIT_USAGE};
use crate::account;
use crate::config::{self, ConfigError};
use crate::modbus::simulator::{Profile, Simulator};

/// An exit code as the process returns it.
pub fn code(c: i32) -> ExitCode {
    ExitCode::from(c as u8)
}

/// Logging to stderr and the last lines in memory (`system.log`); `RUST_LOG` wins over `level` (the config's `gateway.log_level`).
pub fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // journald stamps every line itself (the in-memory copy for `system.log` gets a stamp).
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logs::Tee { stamp: journald });
    // Colour only for a person at a terminal: a file or journald would keep the escapes.
    use std::io::IsTerminal;
    let builder = builder.with_ansi(std::io::stderr().is_terminal());
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Cancelled on SIGTERM or SIGINT.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
    });
    token
}

fn print_config_error(path: &Path, e: &ConfigError) {
    match e {
        ConfigError::Read { .. } => eprintln!("{e}"),
        ConfigError::Invalid(problems) => {
            for p in problems {
                eprintln!("{}: {p}", path.display());
            }
        }
    }
}

pub async fn demo(listen: &str, data: PathBuf, tls: bool) -> ExitCode {
    match super::demo(listen, data, tls, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `run`: the config is checked (and the demo's logins refused beyond loopback) before
/// logging starts at its level and before any port is opened.
pub async fn run_daemon(config: PathBuf) -> ExitCode {
    let loaded = match config::load(&config) {
        Ok(l) => l,
        Err(e) => {
            print_config_error(&config, &e);
            return code(64);
        }
    };
    if let Some(why) = account::well_known_login(&loaded.config) {
        eprintln!("{}: {why}", config.display());
        return code(64);
    }
    init_logging(&loaded.config.gateway.log_level);
    for w in &loaded.warnings {
        tracing::warn!("{}: {w}", config.display());
    }
    crate::raise_fd_limit();
    match crate::run(loaded.config, Some(config.clone()), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: one line per problem, or a summary of what the file configures.
/// `run --once`: the config proved against the devices (SPEC: exit 0 when every device
/// answered, 3 otherwise, 64 for an invalid config before any port is opened).
pub async fn probe(config: &Path) -> ExitCode {
    let loaded = match config::load(config) {
        Ok(l) => l,
        Err(e) => {
            print_config_error(config, &e);
            return code(64);
        }
    };
    let mut out = std::io::stdout().lock();
    if crate::probe::once(&loaded.config, &mut out).await {
        ExitCode::SUCCESS
    } else {
        code(EXIT_LINK)
    }
}

pub fn check_config(config: &Path) -> ExitCode {
    match config::load(config) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("{}: {w} (warning)", config.display());
            }
            let points: usize = l.config.devices.iter().map(|d| d.points.len()).sum();
            println!(
                "{}: ok ({} buses, {} devices, {points} points)",
                config.display(),
                l.config.buses.len(),
                l.config.devices.len(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(config, &e);
            ExitCode::FAILURE
        }
    }
}

/// `unit-caps`: the systemd generator's drop-in, and what it granted.
pub fn unit_caps(config: &Path, drop_in: &Path) -> ExitCode {
    match crate::service::write_caps_drop_in(config, drop_in) {
        Ok(did) => {
            println!("{did}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", drop_in.display());
            ExitCode::FAILURE
        }
    }
}

/// `simulate`: the simulator on TCP, or RTU on a serial device, until a signal.
pub async fn simulate(listen: &str, profile: &str, serial: Option<String>, baud: u32) -> ExitCode {
    let Some(p) = Profile::parse(profile) else {
        eprintln!("error: unknown profile `{profile}` (expected demo, bench or changing)");
        return code(EXIT_USAGE);
    };
    let sim = Simulator::new(p);
    let cancel = shutdown_signal();
    if let Some(dev) = serial {
        use tokio_serial::SerialPortBuilderExt;
        let port = match tokio_serial::new(&dev, baud).open_native_async() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: cannot open {dev}: {e}");
                return code(EXIT_LINK);
            }
        };
        println!("simulator: modbus rtu on {dev}, units {:?}", sim.unit_ids());
        tokio::spawn(sim.clone().animate(cancel.clone()));
        sim.serve_rtu(port, cancel).await;
    } else {
        let spawned =
            crate::modbus::simulator::spawn_tcp(sim.clone(), listen, cancel.clone()).await;
        match spawned {
            Ok(addr) => println!(
                "simulator: modbus tcp on {addr}, units {:?}",
                sim.unit_ids()
            ),
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return code(EXIT_LINK);
            }
        }
        cancel.cancelled().await;
    }
    ExitCode::SUCCESS
}

/// `hash-password`: the PHC string on stdout, nothing of the password anywhere.
pub fn hash_password() -> ExitCode {
    let pw = match account::read_password() {
        Ok(pw) => pw,
        Err(e) => {
            eprintln!("error: {e}");
            return code(EXIT_USAGE);
        }
    };
    match super::hash_password(&pw) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `user add`: prompted password, hashed, written into the config with its comments kept.
pub fn user_add(name: &str, role: &str, config: &Path) -> ExitCode {
    let role = match role {
        "admin" => config::Role::Admin,
        "viewer" => config::Role::Viewer,
        other => {
            eprintln!("error: unknown role `{other}` (expected admin or viewer)");
            return code(EXIT_USAGE);
        }
    };
    let added = account::read_password()
        .and_then(|pw| super::hash_password(&pw))
        .and_then(|hash| account::add_user(config, name, role, &hash));
    match added {
        Ok(new) => {
            println!(
                "{} user `{name}` in {}; check it with: edge-gateway check-config --config {}",
                if new { "added" } else { "updated" },
                config.display(),
                config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
