//! Configuration: TOML parsed into raw types (unknown keys refused), then validated into domain
//! types with every problem named by key path and line.

pub mod calculated;
pub mod edit;
mod keypath;
mod north;
mod notifiers;
mod pieces;
pub mod preflight;
mod raw;
mod shape;
mod validate;
pub mod versions;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::Document;

use keypath::{first_line, line_of_offset, offset_of, path_from_text, KeyPath};
use pieces::{split_devices, Pieces};
use raw::RawConfig;
use validate::Validator;

pub use north::{
    opcua_ids, Cidr, Fleet, FleetKey, Layout, ModbusServer, Opcua, OpcuaSecurity, ServerUnit,
    OPCUA_MISSING,
};

pub use crate::model::event::Priority;
use crate::model::format::{ByteOrder, DataType, Format, Table, WordOrder};
pub use calculated::{Calculated, Formula, Names};
pub use notifiers::{Email, Notifier, NotifierKind};

/// What an unset `password_hash` says in a shipped config: `check-config` and `run` name it
/// with the command that sets one (`edge-gateway user add`).
pub const PASSWORD_PLACEHOLDER: &str = "CHANGE-ME";

/// The demo's embedded config (`edge-gateway demo`); its hashes are the well-known logins `run`
/// refuses beyond loopback.
pub const DEMO: &str = include_str!("../../config/demo.toml");

/// A string that must never reach a log: `Debug` masks it.
#[derive(Clone, PartialEq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: Gateway,
    pub http: Http,
    pub users: Vec<User>,
    pub push: Push,
    pub buses: Vec<Bus>,
    pub devices: Vec<Device>,
    pub rules: Vec<Rule>,
    /// In the order they are evaluated: every input before what reads it.
    pub calculated: Vec<Calculated>,
    pub events: Events,
    pub store: Store,
    pub mysql: Option<Mysql>,
    pub mqtt: Option<Mqtt>,
    pub opcua: Opcua,
    pub modbus_server: ModbusServer,
    pub fleet: Fleet,
    pub notifiers: Vec<Notifier>,
}

/// What an event is about: a device; for a bus's own alarm (`bus_offline`), the bus; for an
/// operator's change to the whole gateway (`config_applied`), the gateway. Event sources are
/// numbered devices first, then buses, then the gateway, so per-source counters (`deviceSeq`,
/// storm control) are one vector.
impl Config {
    pub fn sources(&self) -> usize {
        self.devices.len() + self.buses.len() + 1
    }

    /// The source number of the gateway itself.
    pub fn gateway_source(&self) -> usize {
        self.devices.len() + self.buses.len()
    }

    /// The source number of a bus.
    pub fn bus_source(&self, bus: usize) -> usize {
        self.devices.len() + bus
    }

    /// The id an event carries as `deviceId`: the device's, the bus's name, or the gateway's id.
    pub fn source_id(&self, source: usize) -> &str {
        match (
            self.devices.get(source),
            source.checked_sub(self.devices.len()),
        ) {
            (Some(d), _) => &d.id,
            (None, Some(b)) if b < self.buses.len() => &self.buses[b].name,
            _ => &self.gateway.id,
        }
    }

    /// A point's id, when the source is a device.
    pub fn source_point(&self, source: usize, point: Option<usize>) -> Option<&str> {
        let d = self.devices.get(source)?;
        point.map(|p| d.points[p].id.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Gateway {
    /// Goes into event ids and upstream rows, so it is restricted to `[a-z0-9_-]{1,64}`.
    pub id: String,
    pub data_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace` (beyond SPEC.md); `RUST_LOG` overrides it.
    pub log_level: String,
}

#[derive(Debug, Clone)]
pub struct Http {
    pub listen: String,
    pub allowed_origins: Vec<String>,
    /// Host names the dashboard is reached by besides IP literals, localhost and the box's own
    /// name, lower case and without a port (the DNS-rebinding guard).
    pub allowed_hosts: Vec<String>,
    pub tls: HttpTls,
    /// A session token unused this long expires.
    pub session_idle: Duration,
}

/// `[http] tls`: the dashboard over HTTPS or not, and with whose certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpTls {
    Off,
    /// A key and certificate the gateway made itself, in `{data_dir}/tls`.
    SelfSigned,
    /// PEM files the plant provides: the chain, and its key.
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Viewer,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub password_hash: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropNew,
    DropOldest,
    Disconnect,
}

#[derive(Debug, Clone)]
pub struct Push {
    pub interval: Duration,
    pub queue_capacity: usize,
    pub overflow: Overflow,
    pub max_clients: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Tcp {
        /// `host:port`; resolved at each connect so a DHCP-renumbered PLC is found again.
        address: String,
    },
    /// RTU frames (with CRC) over TCP to a serial server in transparent mode.
    RtuOverTcp { address: String },
    Rtu {
        port: String,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bus {
    pub name: String,
    pub link: Link,
    pub timeout: Duration,
    pub retries: u32,
    pub inter_request_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub id: String,
    pub device_type: String,
    /// Index into [`Config::buses`].
    pub bus: usize,
    pub unit: u8,
    pub poll_interval: Duration,
    pub max_registers_per_read: u16,
    pub max_gap: u16,
    pub offline_after: u32,
    pub points: Vec<Point>,
}

impl Device {
    /// How often point `p` is read: its own rate, else the device's.
    pub fn point_interval(&self, p: usize) -> Duration {
        self.points[p].poll_interval.unwrap_or(self.poll_interval)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: String,
    pub address: u16,
    pub format: Format,
    pub unit: String,
    pub deadband: f64,
    pub report_every: Duration,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub writable: bool,
    /// Its own poll rate (a slow register), else its device's.
    pub poll_interval: Option<Duration>,
    /// Computed from other points (`[[calculated]]`), never read from the device.
    pub calculated: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    Above {
        threshold: f64,
        clear: f64,
    },
    Below {
        threshold: f64,
        clear: f64,
    },
    Outside {
        low: f64,
        high: f64,
        clear: Option<f64>,
    },
    Equals {
        threshold: f64,
    },
    Rate {
        per_s: f64,
    },
    Stale,
    /// A true/false expression over several points; the rule has no point of its own.
    Expr(Formula),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: String,
    /// Index into [`Config::devices`].
    pub device: usize,
    /// Index into that device's points; `None` for an `expr` rule.
    pub point: Option<usize>,
    pub kind: RuleKind,
    pub for_ms: u64,
    /// The clear condition must hold this long before the alarm clears (an off-delay).
    pub clear_for_ms: u64,
    pub priority: Priority,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Events {
    pub max_per_device_per_s: u32,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub history_retention_days: u32,
    pub max_db_mb: u64,
}

#[derive(Debug, Clone)]
pub struct Mysql {
    pub url: Secret,
    pub batch_size: usize,
}

#[derive(Debug, Clone)]
pub struct Mqtt {
    pub url: Secret,
    pub client_id: String,
    pub topic_prefix: String,
    pub qos: u8,
    pub allow_writes: bool,
    /// A write or DCMD older than this (its own timestamp, else since it was received) is
    /// refused, never run late.
    pub command_max_age: Duration,
    /// `format = "sparkplug_b"`: Sparkplug B instead of the JSON topics.
    pub sparkplug: Option<Sparkplug>,
    /// `client_cert` and `client_key`: TLS client authentication to the broker.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// A Sparkplug B edge node's ids (`[mqtt]` `group_id`, `edge_node_id`, `primary_host_id`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sparkplug {
    pub group_id: String,
    /// `gateway.id` unless set.
    pub edge_node_id: String,
    /// Hold data while this host's STATE is offline.
    pub primary_host_id: Option<String>,
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Key path, `devices[0].points[2].type`; empty for a syntax error.
    pub path: String,
    /// 1-based line in the TOML file, when it can be located.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: ")?,
            None => f.write_str("line ?: ")?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in the configuration", .0.len())]
    Invalid(Vec<Problem>),
}

/// A valid config and what looked doubtful in it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => parse(text),
        Err(e) => {
            // Where it goes wrong, by line, like any other problem.
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let text = String::from_utf8_lossy(good);
            Err(ConfigError::Invalid(vec![Problem {
                path: path_from_text(&text, text.len()),
                line: Some(line),
                message: format!(
                    "not UTF-8 (byte 0x{:02X}): a config file is UTF-8 text",
                    bytes[e.valid_up_to()]
                ),
            }]))
        }
    }
}

pub fn parse(text: &str) -> Result<Loaded, ConfigError> {
    // One parse on the way that succeeds: the span-keeping document that locates a problem's
    // line is only built when there is a problem (it costs several times the text in memory,
    // which a 60,000-device config multiplied into gigabytes). A large config's devices are
    // read and checked a piece at a time.
    if let Some((raw, mut pieces)) = split_devices(text) {
        let mut v = Validator::default();
        let config = v.config(raw, &mut pieces);
        if pieces.broken.is_empty() && v.problems.is_empty() {
            return Ok(Loaded {
                config,
                warnings: pieces.locate(v.warnings),
            });
        }
        // Pieces that do not read say so themselves, located in the whole text as a whole
        // read would (reading the whole again took 826 MB for a 12 MB file); what was
        // checked around them is incomplete then and not reported.
        if pieces.broken.is_empty() {
            return Err(ConfigError::Invalid(pieces.locate(v.problems)));
        }
        return Err(ConfigError::Invalid(pieces.broken));
    }
    let raw: RawConfig = match toml_edit::de::from_str(text) {
        Ok(r) => r,
        Err(e) => return Err(ConfigError::Invalid(unreadable(text, &e, true))),
    };
    let mut v = Validator::default();
    let config = v.config(raw, &mut Pieces::none());
    if v.problems.is_empty() {
        Ok(Loaded {
            config,
            warnings: located(text, v.warnings),
        })
    } else {
        Err(ConfigError::Invalid(located(text, v.problems)))
    }
}

/// The problems of a text that does not read as a config: every shape problem in one pass
/// when it is TOML (and with `meaning` the meaning problems of the rest), else the syntax
/// error, each with its path and line.
pub(super) fn unreadable(text: &str, e: &toml_edit::de::Error, meaning: bool) -> Vec<Problem> {
    // TOML, but not of the config's shape: every problem in one pass.
    let Err(_) = Document::parse(text) else {
        return shape::problems(text, e, meaning);
    };
    let (path, line) = match e.span() {
        // Not even TOML: the path read off the text.
        Some(s) => (
            path_from_text(text, s.start),
            Some(line_of_offset(text, s.start)),
        ),
        None => (String::new(), None),
    };
    vec![Problem {
        path,
        line,
        message: first_line(e.message()),
    }]
}

/// Problems found by key path, with their lines: the span-keeping document that locates them
/// is built only when there is something to locate.
fn located(text: &str, found: Vec<(KeyPath, String)>) -> Vec<Problem> {
    if found.is_empty() {
        return Vec::new();
    }
    let doc = Document::parse(text).ok();
    found
        .into_iter()
        .map(|(path, message)| Problem {
            line: doc
                .as_ref()
                .and_then(|d| offset_of(d, &path))
                .map(|o| line_of_offset(text, o)),
            path: path.to_string(),
            message,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::pieces::PIECE;
    use super::*;

    /// A large config: a head, 4,000 devices in both styles (inline points and
    /// `[[devices.points]]`), and rules and a table after them.
    fn large() -> String {
        let mut t = String::from(
            "[gateway]\nid = \"big\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n\
             [templates.m]\npoints = [\n  { id = \"v\", table = \"input\", address = 0, type = \"f32\" },\n]\n",
        );
        for i in 0..4000 {
            let _ = write!(
                t,
                "[[devices]] # number {i}\nid = \"d{i}\"\nbus = \"b\"\nunit = {}\n",
                1 + i % 247
            );
            if i % 2 == 0 {
                t += "points = [\n  { id = \"t\", table = \"holding\", address = 0, type = \"f32\" },\n]\n";
            } else {
                t += "template = \"m\"\n[[devices.points]]\nid = \"s\"\ntable = \"holding\"\naddress = 2\ntype = \"u16\"\n";
            }
        }
        t += "[[rules]]\nid = \"r\"\ndevice = \"d0\"\npoint = \"t\"\nkind = \"above\"\nthreshold = 1.0\n[store]\nmax_db_mb = 64\n";
        t
    }

    /// The problems of a text that must not parse, by path and line.
    fn problems_at(text: &str) -> Vec<(String, Option<usize>)> {
        let Err(ConfigError::Invalid(p)) = parse(text) else {
            panic!("should not parse")
        };
        p.into_iter().map(|p| (p.path, p.line)).collect()
    }

    /// The line `needle` first starts on.
    fn line_in(text: &str, needle: &str) -> usize {
        text[..text.find(needle).unwrap()].lines().count() + 1
    }

    #[test]
    fn a_large_config_read_in_pieces_is_the_same_as_read_whole() {
        let text = large();
        assert!(text.len() > 2 * PIECE);
        let (_, pieces) = split_devices(&text).expect("read in pieces");
        assert!(pieces.cuts.len() > 3, "{} pieces", pieces.cuts.len());
        let in_pieces = parse(&text).unwrap().config;
        let raw: RawConfig = toml_edit::de::from_str(&text).unwrap();
        let mut v = Validator::default();
        let whole = v.config(raw, &mut Pieces::none());
        assert!(v.problems.is_empty());
        assert_eq!(format!("{in_pieces:?}"), format!("{whole:?}"));
        assert_eq!(in_pieces.devices.len(), 4000);
    }

    #[test]
    fn a_config_not_of_that_shape_or_with_a_problem_is_read_whole() {
        // Devices on both sides of another table: not one run.
        let text = large().replacen("[[devices]] # number 2000\n", "[store]\n[[devices]]\n", 1);
        assert!(split_devices(&text).is_none());
        // A piece that does not read, and a problem in a piece: each gets the path and line
        // of a whole read. `unit = 10` is device 9's.
        for broken in ["unit = = 10\n", "unit = 1000\n"] {
            let text = large().replacen("unit = 10\n", broken, 1);
            let line = text[..text.find(broken).unwrap()].lines().count() + 1;
            let Err(ConfigError::Invalid(p)) = parse(&text) else {
                panic!("should not parse")
            };
            assert_eq!(
                (p[0].path.as_str(), p[0].line),
                ("devices[9].unit", Some(line))
            );
        }
        // Problems in the last piece and after the devices, located piece by piece (a whole
        // read of 12 MB took 1.08 GB to say where one problem was), at the lines a whole
        // read gives.
        let text = large()
            .replacen(
                "# number 3990\nid = \"d3990\"\nbus = \"b\"\n",
                "# number 3990\nid = \"d3990\"\nbus = \"nope\"\n",
                1,
            )
            .replacen("point = \"t\"\nkind", "point = \"zz\"\nkind", 1);
        assert_eq!(
            problems_at(&text),
            [
                (
                    "devices[3990].bus".into(),
                    Some(line_in(&text, "bus = \"nope\""))
                ),
                (
                    "rules[0].point".into(),
                    Some(line_in(&text, "point = \"zz\""))
                ),
            ]
        );
        // Two pieces that do not read (a syntax error near the start, a wrong type near the
        // end): both said in one pass, each piece read alone (a whole read again of a 12 MB
        // config with a syntax error took 826 MB), at the paths and lines a whole read gives.
        let text = large()
            .replacen("unit = 10\n", "unit = = 10\n", 1)
            .replacen(
                "# number 3990\nid = \"d3990\"\nbus = \"b\"\n",
                "# number 3990\nid = \"d3990\"\nbus = 7\n",
                1,
            );
        assert_eq!(
            problems_at(&text),
            [
                (
                    "devices[9].unit".into(),
                    Some(line_in(&text, "unit = = 10"))
                ),
                ("devices[3990].bus".into(), Some(line_in(&text, "bus = 7"))),
            ]
        );
    }
}
