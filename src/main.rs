//! The `edge-gateway` binary: parses the command line and hands each subcommand to the library
//! (`cli::commands`), which sets up logging and signals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use edge_gateway::cli::commands::{self, code};
use edge_gateway::cli::{self, Target, EXIT_USAGE};

#[derive(Parser)]
#[command(
    name = "edge-gateway",
    version = edge_gateway::VERSION,
    about = "Industrial edge gateway: Modbus TCP/RTU to SQLite, MQTT, MySQL and a live LAN dashboard"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, default_value = "/etc/edge-gateway/gateway.toml")]
        config: PathBuf,
        /// Poll every device once, print what each point read, exit 0 when all answered, 3 if not.
        #[arg(long)]
        once: bool,
    },
    /// Built-in simulator plus the gateway on embedded defaults; needs no other program.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "./demo-data")]
        data: PathBuf,
        /// HTTPS with a self-signed certificate made in the data directory.
        #[arg(long)]
        tls: bool,
    },
    /// Validate a config file: exit 0 when valid, 1 with one line per problem.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
        /// Then poll every device once against the real devices (as `run --once`).
        #[arg(long)]
        probe: bool,
    },
    /// The Modbus simulator alone (TCP, or RTU on a serial port).
    Simulate {
        #[arg(long, default_value = "127.0.0.1:5020")]
        listen: String,
        /// demo (boiler, pump, meter on units 1-3) or bench (50 identical units).
        #[arg(long, default_value = "demo")]
        profile: String,
        /// Serve Modbus RTU on this serial device instead of TCP.
        #[arg(long)]
        serial: Option<String>,
        #[arg(long, default_value_t = 9600)]
        baud: u32,
    },
    /// The systemd generator's step: a drop-in granting CAP_NET_BIND_SERVICE when the config
    /// listens below port 1024, removed otherwise.
    #[command(hide = true)]
    UnitCaps {
        #[arg(long, default_value = "/etc/edge-gateway/gateway.toml")]
        config: PathBuf,
        /// The drop-in file to write or remove.
        #[arg(long)]
        drop_in: PathBuf,
    },
    /// Print an argon2id PHC string for [[users]] from a password read on stdin.
    ///
    /// On a terminal it is prompted for twice without echo; piped, one line is read.
    HashPassword,
    /// A fleet of gateways over their MQTT broker (docs/fleet.md).
    Fleet {
        #[command(subcommand)]
        action: edge_gateway::fleet::command::Action,
    },
    /// The dashboard's HTTPS certificate.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Dashboard users in a config file.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// One-off read for commissioning a device.
    Read {
        #[command(flatten)]
        link: LinkArgs,
        #[command(flatten)]
        at: AtArgs,
        /// How many values of `--type` (not registers: 2 f32 values are 4 registers).
        #[arg(long, default_value_t = 1)]
        count: u16,
        #[arg(long)]
        json: bool,
        /// Decode in all four byte/word orders (ABCD BADC CDAB DCBA), as the inspector does.
        #[arg(long)]
        all_orders: bool,
        /// Each value as `address  raw-hex  → value` (the default on a terminal; piped, the
        /// output is one bare value per line).
        #[arg(long)]
        raw: bool,
    },
    /// One-off write (FC 5 coil, FC 6 one register, FC 16 wider types).
    Write {
        #[command(flatten)]
        link: LinkArgs,
        #[command(flatten)]
        at: AtArgs,
        /// The value; negative numbers need no `=` (`--value -7`).
        #[arg(long, allow_hyphen_values = true)]
        value: String,
    },
}

#[derive(Subcommand)]
enum CertAction {
    /// Its file and SHA-256 fingerprint: compare it with the one the browser shows before
    /// accepting the certificate.
    Show {
        #[arg(long, default_value = "/etc/edge-gateway/gateway.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Prompt for a password (no echo) and write the user into the config, comments kept;
    /// an entry of that name (the shipped placeholder, say) is updated.
    Add {
        name: String,
        /// admin or viewer.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "/etc/edge-gateway/gateway.toml")]
        config: PathBuf,
    },
}

#[derive(Args)]
struct LinkArgs {
    /// Modbus TCP device, HOST:PORT.
    #[arg(long)]
    tcp: Option<String>,
    /// RTU frames over TCP to a serial server, HOST:PORT.
    #[arg(long)]
    rtu_over_tcp: Option<String>,
    /// Modbus RTU serial device, e.g. /dev/ttyUSB0.
    #[arg(long)]
    serial: Option<String>,
    #[arg(long, default_value_t = 9600)]
    baud: u32,
    #[arg(long, default_value = "none")]
    parity: String,
    #[arg(long, default_value_t = 8)]
    data_bits: u8,
    #[arg(long, default_value_t = 1)]
    stop_bits: u8,
    /// How long to wait for the answer.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

#[derive(Args)]
struct AtArgs {
    #[arg(long)]
    unit: u8,
    /// coil, discrete, input or holding (implied by a Modicon --address).
    #[arg(long)]
    table: Option<String>,
    /// 0-based protocol address: decimal, 0x hex, or a Modicon reference (40003 = holding 2).
    #[arg(long)]
    address: String,
    /// bool u16 i16 u32 i32 u64 i64 f32 f64 string (default u16, bool for coil/discrete).
    #[arg(long = "type")]
    data_type: Option<String>,
    /// Registers, for --type string.
    #[arg(long, default_value_t = 0)]
    length: u16,
    #[arg(long, default_value = "big")]
    byte_order: String,
    #[arg(long, default_value = "big")]
    word_order: String,
}

fn target(link: LinkArgs, at: AtArgs) -> Result<Target, String> {
    let l = cli::link_from_args(cli::LinkSpec {
        tcp: link.tcp,
        rtu_over_tcp: link.rtu_over_tcp,
        serial: link.serial,
        baud: link.baud,
        parity: link.parity,
        data_bits: link.data_bits,
        stop_bits: link.stop_bits,
    })?;
    let (address, table) = cli::address_from_args(&at.address, at.table.as_deref())?;
    let (table, format) = cli::format_from_args(
        &table,
        at.data_type.as_deref(),
        &at.byte_order,
        &at.word_order,
        at.length,
    )?;
    Ok(Target {
        link: l,
        unit: at.unit,
        table,
        address,
        format,
        timeout: Duration::from_millis(link.timeout_ms),
    })
}

fn main() -> ExitCode {
    // Before the runtime starts its threads.
    edge_gateway::tune_allocator();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run_cli()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_cli() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => code(EXIT_USAGE),
            };
        }
    };
    // `run` starts logging once its config (which may set the level) is read.
    if !matches!(cli.command, Command::Run { .. }) {
        commands::init_logging("info");
    }
    match cli.command {
        Command::Run { config, once: true } => commands::probe(&config).await,
        Command::Run { config, .. } => commands::run_daemon(config).await,
        Command::Demo { listen, data, tls } => commands::demo(&listen, data, tls).await,
        Command::CheckConfig {
            config,
            probe: true,
        } => match commands::check_config(&config) {
            ExitCode::SUCCESS => commands::probe(&config).await,
            failed => failed,
        },
        Command::CheckConfig { config, .. } => commands::check_config(&config),
        Command::UnitCaps { config, drop_in } => commands::unit_caps(&config, &drop_in),
        Command::Fleet { action } => edge_gateway::fleet::command::run(action).await,
        Command::Simulate {
            listen,
            profile,
            serial,
            baud,
        } => commands::simulate(&listen, &profile, serial, baud).await,
        Command::HashPassword => commands::hash_password(),
        Command::Cert {
            action: CertAction::Show { config },
        } => code(cli::cert_show(&config)),
        Command::User {
            action: UserAction::Add { name, role, config },
        } => commands::user_add(&name, &role, &config),
        Command::Read {
            link,
            at,
            count,
            json,
            all_orders,
            raw,
        } => match target(link, at) {
            Ok(t) => {
                use std::io::IsTerminal;
                let output = if json {
                    cli::ReadOutput::Json
                } else if raw || std::io::stdout().is_terminal() {
                    cli::ReadOutput::Annotated
                } else {
                    cli::ReadOutput::Values
                };
                code(cli::read(t, count, output, all_orders).await)
            }
            Err(e) => {
                eprintln!("error: {e}");
                code(EXIT_USAGE)
            }
        },
        Command::Write { link, at, value } => match target(link, at) {
            Ok(t) => code(cli::write(t, &value).await),
            Err(e) => {
                eprintln!("error: {e}");
                code(EXIT_USAGE)
            }
        },
    }
}
