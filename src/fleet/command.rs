//! `edge-gateway fleet …`: the subcommands as the CLI parses them, and each one run to an exit
//! code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::client;

/// The broker the fleet shares, and the topic prefix its gateways publish under.
#[derive(Args)]
pub struct Broker {
    /// mqtt[s]://[user:pass@]host[:port]
    #[arg(long)]
    broker: String,
    #[arg(long, default_value = "edge")]
    prefix: String,
}

#[derive(Subcommand)]
pub enum Action {
    /// Make an Ed25519 key pair: the private key into FILE (0600), the `public_keys` line
    /// printed for every gateway's `[fleet]`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Every gateway's retained state: id, online, version, devices, alarms, backlog, age.
    Ls {
        #[command(flatten)]
        at: Broker,
        #[arg(long)]
        json: bool,
    },
    /// Sign a config file and send it to gateways; one line per gateway with its result.
    ///
    /// Exit 0 only when every target applied it. A `[gateway] id` in the file must be the
    /// target's, or left out (each gateway keeps its own id and data_dir).
    Apply {
        #[command(flatten)]
        at: Broker,
        /// The private key from `fleet keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The gateways to send it to (one or more ids).
        #[arg(long, num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
        gateway: Vec<String>,
        /// Every gateway with a fresh state under the prefix (one message to `_all`).
        #[arg(long)]
        all: bool,
        /// Each gateway rolls back by itself unless confirmed within this many seconds; the
        /// command confirms each one as soon as it reports the config applied.
        #[arg(long, default_value_t = 0)]
        confirm_s: u64,
        /// The config file to send (after `--gateway ID…`, the last word is taken as it).
        config: Option<PathBuf>,
    },
    /// One signed read-only call to a gateway; prints the reply.
    Rpc {
        #[command(flatten)]
        at: Broker,
        /// The private key from `fleet keygen`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        gateway: String,
        /// system.diagnostics, system.stats, alarms.active, events.query, points.history,
        /// system.log.
        service: String,
        /// Its params, a JSON object.
        #[arg(default_value = "{}")]
        params: String,
    },
}

/// Exit 0 when done (`rpc`: the reply's code is 0; `apply`: every target applied).
pub async fn run(action: Action) -> ExitCode {
    let done = match action {
        Action::Keygen { out } => client::keygen(&out).map(|line| println!("{line}")),
        Action::Ls { at, json } => client::print_ls(&at.broker, &at.prefix, json).await,
        Action::Apply {
            at,
            key,
            gateway,
            all,
            confirm_s,
            config,
        } => {
            let mut gateway = gateway;
            // `--gateway a b FILE`: the ids take every word, the file is the last.
            let Some(config) = config.or_else(|| gateway.pop().map(PathBuf::from)) else {
                eprintln!("error: no CONFIG file given");
                return ExitCode::from(2);
            };
            if !all && gateway.is_empty() {
                eprintln!("error: no gateway id before CONFIG");
                return ExitCode::from(2);
            }
            let targets = if all { None } else { Some(gateway) };
            let send = client::Send {
                url: &at.broker,
                prefix: &at.prefix,
                key: &key,
            };
            client::print_apply(&send, targets, confirm_s, &config).await
        }
        Action::Rpc {
            at,
            key,
            gateway,
            service,
            params,
        } => client::print_rpc(&at.broker, &at.prefix, &key, &gateway, &service, &params).await,
    };
    done.map_or_else(
        |e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        },
        |()| ExitCode::SUCCESS,
    )
}
