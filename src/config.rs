//! Configuration: TOML parsed into raw types (unknown keys refused), then validated into domain
//! types with every problem named by key path and line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml_edit::{Document, Item};

use crate::modbus::codec::{ByteOrder, DataType, Format, Table, WordOrder};

// ---------------------------------------------------------------------------------------------
// Raw types: exactly the TOML, nothing checked beyond shape. Enumerations stay strings so that
// a bad one is reported by validation with its key path, next to every other problem.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: Option<RawGateway>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    push: RawPush,
    #[serde(default)]
    buses: Vec<RawBus>,
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    templates: BTreeMap<String, RawTemplate>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    store: RawStore,
    mysql: Option<RawMysql>,
    mqtt: Option<RawMqtt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Option<String>,
    data_dir: Option<PathBuf>,
    log_level: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    role: String,
    password_hash: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPush {
    interval_ms: Option<i64>,
    queue_capacity: Option<i64>,
    overflow: Option<String>,
    max_clients: Option<i64>,
    heartbeat_interval_s: Option<i64>,
    heartbeat_timeout_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    name: String,
    kind: String,
    port: Option<String>,
    baud: Option<i64>,
    parity: Option<String>,
    data_bits: Option<i64>,
    stop_bits: Option<i64>,
    address: Option<String>,
    timeout_ms: Option<i64>,
    retries: Option<i64>,
    inter_request_delay_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: String,
    #[serde(rename = "type", default)]
    device_type: String,
    bus: String,
    unit: i64,
    poll_interval_ms: Option<i64>,
    byte_order: Option<String>,
    word_order: Option<String>,
    max_registers_per_read: Option<i64>,
    max_gap: Option<i64>,
    offline_after: Option<i64>,
    #[serde(default)]
    template: String,
    #[serde(default)]
    points: Vec<RawPoint>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    id: String,
    table: String,
    address: i64,
    #[serde(rename = "type")]
    data_type: String,
    length: Option<i64>,
    bit: Option<i64>,
    scale: Option<f64>,
    offset: Option<f64>,
    #[serde(default)]
    unit: String,
    deadband: Option<f64>,
    report_every_s: Option<i64>,
    min: Option<f64>,
    max: Option<f64>,
    #[serde(default)]
    writable: bool,
    byte_order: Option<String>,
    word_order: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(default)]
    points: Vec<RawPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    device: String,
    point: String,
    kind: String,
    threshold: Option<f64>,
    clear: Option<f64>,
    low: Option<f64>,
    high: Option<f64>,
    per_s: Option<f64>,
    for_ms: Option<i64>,
    priority: Option<String>,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    max_per_device_per_s: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    history_retention_days: Option<i64>,
    max_db_mb: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMysql {
    url: String,
    batch_size: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: String,
    client_id: Option<String>,
    topic_prefix: Option<String>,
    qos: Option<i64>,
    #[serde(default)]
    allow_writes: bool,
}

// ---------------------------------------------------------------------------------------------
// Domain types: what the rest of the gateway runs on. Every value is checked and defaulted.
// ---------------------------------------------------------------------------------------------

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
    pub events: Events,
    pub store: Store,
    pub mysql: Option<Mysql>,
    pub mqtt: Option<Mqtt>,
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
}

/// An event's priority, in rank order: its one spelling (config, SPEC JSON, SQL, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Normal,
    High,
    Emergency,
}

impl Priority {
    /// Every priority, lowest first (the index is the rank).
    pub const ALL: [Priority; 3] = [Priority::Normal, Priority::High, Priority::Emergency];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// 0, 1, 2: stored beside the name so SQL can filter and sort by it.
    pub fn rank(self) -> i64 {
        self as i64
    }
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: String,
    /// Index into [`Config::devices`].
    pub device: usize,
    /// Index into that device's points.
    pub point: usize,
    pub kind: RuleKind,
    pub for_ms: u64,
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
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

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

/// The key path at `offset` of a text that did not parse, read off the text itself: the last
/// table header before it (an array of tables counted) and the key on its line.
fn path_from_text(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let mut table = KeyPath::default();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    // A header's path: each enclosing array of tables at its current element.
    let path_of = |name: &str, arrays: &HashMap<String, usize>| {
        let mut p = KeyPath::default();
        let mut prefix = String::new();
        for k in name.split('.').map(str::trim) {
            if !prefix.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(k);
            p = p.key(k);
            if let Some(n) = arrays.get(&prefix) {
                p = p.index(n.saturating_sub(1));
            }
        }
        p
    };
    for line in before.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            // A new element: the arrays nested in the previous one start again.
            arrays.retain(|k, _| !k.starts_with(&format!("{name}.")));
            *arrays.entry(name.clone()).or_insert(0) += 1;
            table = path_of(&name, &arrays);
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = path_of(name.trim(), &arrays);
        }
    }
    let line = text[before.rfind('\n').map_or(0, |i| i + 1)..]
        .lines()
        .next()
        .unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !line.trim_start().starts_with('[') && !key.trim().is_empty() => {
            table.key(key.trim().trim_matches('"')).to_string()
        }
        _ => table.to_string(),
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
        if !pieces.failed && v.problems.is_empty() {
            return Ok(Loaded {
                config,
                warnings: located(text, v.warnings),
            });
        }
        // A piece that does not read, or a problem: the whole is read again, which gives
        // every problem its path and line exactly as for any other config.
    }
    let raw: RawConfig = match toml_edit::de::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (path, line) = match e.span() {
                Some(s) => {
                    let path = match Document::parse(text) {
                        Ok(doc) => path_at(&doc, s.start),
                        // Not even TOML: read the path off the text.
                        Err(_) => path_from_text(text, s.start),
                    };
                    (path, Some(line_of_offset(text, s.start)))
                }
                None => (String::new(), None),
            };
            return Err(ConfigError::Invalid(vec![Problem {
                path,
                line,
                message: first_line(e.message()),
            }]));
        }
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

/// Past twice this size, a config's `[[devices]]` blocks are read this much at a time.
const PIECE: usize = 64 * 1024;

/// A table header line's name without spaces (`[[devices]]`, `[devices.points]`); `None` for
/// any other line (an array's `[1, 2],` has a comma, a key an `=`).
fn header(line: &str) -> Option<String> {
    let l = line.split('#').next().unwrap_or("").trim();
    let ok = l.starts_with('[')
        && l.ends_with(']')
        && !l.contains([',', '=', '{', '"', '\''])
        && l.len() > 2;
    ok.then(|| l.chars().filter(|c| !c.is_whitespace()).collect())
}

fn under_devices(h: &str) -> bool {
    h == "[[devices]]" || h.starts_with("[[devices.") || h.starts_with("[devices.")
}

/// A large config (past twice [`PIECE`]) whose `[[devices]]` blocks form one run: the rest
/// read at once, and the devices to be read a piece at a time while they are checked.
/// toml_edit's parser holds ~65 times the text it reads (tokens, events, a document with every
/// span), and a raw device ~1.4 KB until it is checked: a 10 MB config of 60,000 devices took
/// 0.9 GB read whole. `None` for a config of any other shape, read whole.
fn split_devices(text: &str) -> Option<(RawConfig, Pieces<'_>)> {
    if text.len() <= 2 * PIECE {
        return None;
    }
    let mut headers: Vec<(usize, String)> = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some(h) = header(line) {
            headers.push((at, h));
        }
        at += line.len();
    }
    let first = headers.iter().position(|(_, h)| h == "[[devices]]")?;
    let end_at = headers[first..]
        .iter()
        .position(|(_, h)| !under_devices(h))
        .map_or(headers.len(), |i| first + i);
    if headers[end_at..].iter().any(|(_, h)| under_devices(h)) {
        return None;
    }
    let (start, end) = (
        headers[first].0,
        headers.get(end_at).map_or(text.len(), |(o, _)| *o),
    );
    let rest = format!("{}{}", &text[..start], &text[end..]);
    let raw: RawConfig = toml_edit::de::from_str(&rest).ok()?;
    if !raw.devices.is_empty() {
        return None;
    }
    let mut cuts = Vec::new();
    let mut piece = start;
    let device_starts = headers[first + 1..end_at]
        .iter()
        .filter(|(_, h)| h == "[[devices]]")
        .map(|(o, _)| *o);
    for cut in device_starts.chain([end]) {
        if cut - piece >= PIECE || cut == end {
            cuts.push((piece, cut));
            piece = cut;
        }
    }
    cuts.reverse();
    Some((
        raw,
        Pieces {
            text,
            cuts,
            failed: false,
        },
    ))
}

/// The devices of a large config, a piece of the text at a time, in order.
struct Pieces<'a> {
    text: &'a str,
    /// Byte ranges still to read, last first.
    cuts: Vec<(usize, usize)>,
    /// A piece did not read: what was checked is incomplete, and the whole must be read.
    failed: bool,
}

impl Pieces<'_> {
    fn none() -> Pieces<'static> {
        Pieces {
            text: "",
            cuts: Vec::new(),
            failed: false,
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = Vec<RawDevice>;

    fn next(&mut self) -> Option<Vec<RawDevice>> {
        if self.failed {
            return None;
        }
        let (a, b) = self.cuts.pop()?;
        match toml_edit::de::from_str::<RawConfig>(&self.text[a..b]) {
            Ok(part) => Some(part.devices),
            Err(_) => {
                self.failed = true;
                None
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

// ---------------------------------------------------------------------------------------------
// Key paths and their lines
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug, Default)]
struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn item_span(item: &Item) -> Option<std::ops::Range<usize>> {
    match item {
        Item::Table(t) => t.span(),
        Item::Value(v) => v.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

/// A child of a table-like or array-like item, by key or index, with its key's span. Items are
/// cloned: this runs only to locate a problem, never on a hot path.
fn child(item: &Item, seg: &Seg) -> Option<(Item, Option<std::ops::Range<usize>>)> {
    match (item, seg) {
        (Item::Table(t), Seg::Key(k)) => t.get_key_value(k).map(|(key, v)| (v.clone(), key.span())),
        (Item::Value(toml_edit::Value::InlineTable(t)), Seg::Key(k)) => {
            t.get_key_value(k).map(|(key, v)| (v.clone(), key.span()))
        }
        (Item::ArrayOfTables(a), Seg::Index(i)) => {
            a.get(*i).map(|t| (Item::Table(t.clone()), t.span()))
        }
        (Item::Value(toml_edit::Value::Array(a)), Seg::Index(i)) => {
            a.get(*i).map(|v| (Item::Value(v.clone()), v.span()))
        }
        _ => None,
    }
}

/// The byte offset where a key path starts: its key when it has one, else its value; for a
/// path that does not exist in the file (a defaulted key), the deepest part that does.
fn offset_of(doc: &Document<&str>, path: &KeyPath) -> Option<usize> {
    fn go(item: &Item, segs: &[Seg], best: Option<usize>) -> Option<usize> {
        let Some((seg, rest)) = segs.split_first() else {
            return best;
        };
        match child(item, seg) {
            Some((next, key_span)) => {
                let here = key_span
                    .or_else(|| item_span(&next))
                    .map(|s| s.start)
                    .or(best);
                go(&next, rest, here)
            }
            None => best,
        }
    }
    go(doc.as_item(), &path.0, None)
}

/// The deepest key path whose key or value covers `offset`: names the key a serde error is about.
fn path_at(doc: &Document<&str>, offset: usize) -> String {
    fn walk(item: &Item, path: KeyPath, offset: usize, best: &mut Option<KeyPath>) {
        let covers = |s: Option<std::ops::Range<usize>>| s.is_some_and(|s| s.contains(&offset));
        match item {
            Item::Table(t) => {
                for (k, v) in t.iter() {
                    let p = path.key(k);
                    let key_span = t.key(k).and_then(|k| k.span());
                    if covers(key_span) || covers(item_span(v)) {
                        *best = Some(p.clone());
                    }
                    walk(v, p, offset, best);
                }
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = path.index(i);
                    if covers(t.span()) {
                        *best = Some(p.clone());
                    }
                    walk(&Item::Table(t.clone()), p, offset, best);
                }
            }
            Item::Value(toml_edit::Value::InlineTable(t)) => {
                for (k, v) in t.iter() {
                    let p = path.key(k);
                    let key_span = t.key(k).and_then(|k| k.span());
                    if covers(key_span) || covers(v.span()) {
                        *best = Some(p.clone());
                    }
                    walk(&Item::Value(v.clone()), p, offset, best);
                }
            }
            Item::Value(toml_edit::Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    let p = path.index(i);
                    if covers(v.span()) {
                        *best = Some(p.clone());
                    }
                    walk(&Item::Value(v.clone()), p, offset, best);
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    walk(doc.as_item(), KeyPath::default(), offset, &mut best);
    best.map(|p| p.to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Checks the raw config into the domain types, collecting every problem by key path (their
/// lines are found afterwards, only when there are any).
#[derive(Default)]
struct Validator {
    problems: Vec<(KeyPath, String)>,
    warnings: Vec<(KeyPath, String)>,
}

const TYPES: &str = "bool, u16, i16, u32, i32, u64, i64, f32, f64, string";

impl Validator {
    fn err(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.problems.push((path.clone(), message.into()));
    }

    fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.warnings.push((path.clone(), message.into()));
    }

    /// An integer in `lo..=hi`, or the default when absent.
    fn int(&mut self, path: &KeyPath, v: Option<i64>, default: i64, lo: i64, hi: i64) -> i64 {
        match v {
            None => default,
            Some(x) if (lo..=hi).contains(&x) => x,
            Some(x) => {
                self.err(path, format!("{x} is outside {lo}..={hi}"));
                default
            }
        }
    }

    /// `more` brings devices after `raw.devices` (a large config's, a piece at a time).
    fn config(&mut self, raw: RawConfig, more: &mut Pieces<'_>) -> Config {
        let root = KeyPath::default();
        let gateway = self.gateway(raw.gateway, &root.key("gateway"));
        let http = self.http(raw.http, &root.key("http"));
        let users = self.users(raw.users);
        let push = self.push(raw.push, &root.key("push"));
        let buses = self.buses(raw.buses);
        let templates = raw.templates;
        let devices = self.devices(
            std::iter::once(raw.devices).chain(more).flatten(),
            &buses,
            &templates,
        );
        let rules = self.rules(raw.rules, &devices);
        let events = Events {
            max_per_device_per_s: self.int(
                &root.key("events").key("max_per_device_per_s"),
                raw.events.max_per_device_per_s,
                20,
                1,
                100_000,
            ) as u32,
        };
        let sp = root.key("store");
        let store = Store {
            history_retention_days: self.int(
                &sp.key("history_retention_days"),
                raw.store.history_retention_days,
                7,
                1,
                3650,
            ) as u32,
            max_db_mb: self.int(&sp.key("max_db_mb"), raw.store.max_db_mb, 512, 8, 1 << 20) as u64,
        };
        let mysql = raw.mysql.map(|m| {
            let p = root.key("mysql");
            if !m.url.starts_with("mysql://") {
                self.err(&p.key("url"), "must start with mysql://");
            }
            Mysql {
                url: Secret(m.url),
                batch_size: self.int(&p.key("batch_size"), m.batch_size, 500, 1, 10_000) as usize,
            }
        });
        let mqtt = raw.mqtt.map(|m| {
            let p = root.key("mqtt");
            if !(m.url.starts_with("mqtt://") || m.url.starts_with("mqtts://")) {
                self.err(&p.key("url"), "must start with mqtt:// or mqtts://");
            }
            let topic_prefix = m.topic_prefix.unwrap_or_else(|| "edge".into());
            if topic_prefix.contains(['+', '#']) || topic_prefix.is_empty() {
                self.err(
                    &p.key("topic_prefix"),
                    "must be non-empty and free of + and #",
                );
            }
            Mqtt {
                url: Secret(m.url),
                client_id: m.client_id.unwrap_or_else(|| gateway.id.clone()),
                topic_prefix,
                qos: self.int(&p.key("qos"), m.qos, 1, 0, 2) as u8,
                allow_writes: m.allow_writes,
            }
        });
        Config {
            gateway,
            http,
            users,
            push,
            buses,
            devices,
            rules,
            events,
            store,
            mysql,
            mqtt,
        }
    }

    fn gateway(&mut self, raw: Option<RawGateway>, p: &KeyPath) -> Gateway {
        let (id, data_dir, log_level) = match raw {
            Some(g) => (g.id, g.data_dir, g.log_level),
            None => (None, None, None),
        };
        let log_level = log_level.unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            self.err(
                &p.key("log_level"),
                format!("`{log_level}` must be error, warn, info, debug or trace"),
            );
        }
        let id = match id {
            Some(id) => {
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    });
                if !ok {
                    self.err(
                        &p.key("id"),
                        format!("`{id}` must match [a-z0-9_-]{{1,64}}"),
                    );
                }
                id
            }
            None => {
                self.err(p, "gateway.id is required");
                String::new()
            }
        };
        Gateway {
            id,
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from("/var/lib/edge-gateway")),
            log_level,
        }
    }

    fn http(&mut self, raw: RawHttp, p: &KeyPath) -> Http {
        let listen = raw.listen.unwrap_or_else(|| "0.0.0.0:8080".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            self.err(
                &p.key("listen"),
                format!("`{listen}` is not an IP:port address"),
            );
        }
        for (i, o) in raw.allowed_origins.iter().enumerate() {
            // An Origin is scheme://host[:port]; anything else could never match one.
            let ok = o.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
            });
            if !ok {
                self.err(
                    &p.key("allowed_origins").index(i),
                    format!("`{o}` is not an origin like `https://gw.example:8443`"),
                );
            }
        }
        let mut allowed_hosts = Vec::new();
        for (i, h) in raw.allowed_hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if ok {
                allowed_hosts.push(h.to_ascii_lowercase());
            } else {
                self.err(
                    &p.key("allowed_hosts").index(i),
                    format!("`{h}` is not a host name (letters, digits, `-` and `.`, no port)"),
                );
            }
        }
        Http {
            listen,
            allowed_origins: raw.allowed_origins,
            allowed_hosts,
        }
    }

    fn users(&mut self, raw: Vec<RawUser>) -> Vec<User> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let p = KeyPath::default().key("users").index(i);
            if u.name.is_empty() {
                self.err(&p.key("name"), "must not be empty");
            } else if !seen.insert(u.name.clone()) {
                self.err(&p.key("name"), format!("duplicate user `{}`", u.name));
            }
            let role = match u.role.as_str() {
                "admin" => Role::Admin,
                "viewer" => Role::Viewer,
                other => {
                    self.err(
                        &p.key("role"),
                        format!("unknown role `{other}` (expected admin or viewer)"),
                    );
                    Role::Viewer
                }
            };
            if !u.password_hash.starts_with("$argon2") {
                self.err(
                    &p.key("password_hash"),
                    "must be an argon2 PHC string (make one with `edge-gateway hash-password`)",
                );
            }
            out.push(User {
                name: u.name,
                role,
                password_hash: Secret(u.password_hash),
            });
        }
        out
    }

    fn push(&mut self, raw: RawPush, p: &KeyPath) -> Push {
        let overflow = match raw.overflow.as_deref().unwrap_or("drop_oldest") {
            "drop_new" => Overflow::DropNew,
            "drop_oldest" => Overflow::DropOldest,
            "disconnect" => Overflow::Disconnect,
            other => {
                self.err(
                    &p.key("overflow"),
                    format!(
                        "unknown policy `{other}` (expected drop_new, drop_oldest or disconnect)"
                    ),
                );
                Overflow::DropOldest
            }
        };
        let hb = self.int(
            &p.key("heartbeat_interval_s"),
            raw.heartbeat_interval_s,
            15,
            1,
            3600,
        );
        let hbt = self.int(
            &p.key("heartbeat_timeout_s"),
            raw.heartbeat_timeout_s,
            45,
            1,
            36_000,
        );
        if hbt <= hb {
            self.err(
                &p.key("heartbeat_timeout_s"),
                "must be longer than heartbeat_interval_s",
            );
        }
        Push {
            interval: Duration::from_millis(self.int(
                &p.key("interval_ms"),
                raw.interval_ms,
                6000,
                500,
                3_600_000,
            ) as u64),
            queue_capacity: self.int(
                &p.key("queue_capacity"),
                raw.queue_capacity,
                100,
                1,
                1_000_000,
            ) as usize,
            overflow,
            max_clients: self.int(&p.key("max_clients"), raw.max_clients, 1000, 1, 1_000_000)
                as usize,
            heartbeat_interval: Duration::from_secs(hb as u64),
            heartbeat_timeout: Duration::from_secs(hbt as u64),
        }
    }

    fn buses(&mut self, raw: Vec<RawBus>) -> Vec<Bus> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, b) in raw.into_iter().enumerate() {
            let p = KeyPath::default().key("buses").index(i);
            if b.name.is_empty() {
                self.err(&p.key("name"), "must not be empty");
            } else if !seen.insert(b.name.clone()) {
                self.err(&p.key("name"), format!("duplicate bus `{}`", b.name));
            }
            let link = match b.kind.as_str() {
                "tcp" => {
                    for (key, present) in [
                        ("port", b.port.is_some()),
                        ("baud", b.baud.is_some()),
                        ("parity", b.parity.is_some()),
                        ("data_bits", b.data_bits.is_some()),
                        ("stop_bits", b.stop_bits.is_some()),
                    ] {
                        if present {
                            self.err(&p.key(key), "only applies to kind = \"rtu\"");
                        }
                    }
                    let address = b.address.clone().unwrap_or_default();
                    if b.address.is_none() {
                        self.err(&p, "kind = \"tcp\" needs address = \"host:port\"");
                    } else if !valid_host_port(&address) {
                        self.err(&p.key("address"), format!("`{address}` is not host:port"));
                    }
                    Link::Tcp { address }
                }
                "rtu" => {
                    if b.address.is_some() {
                        self.err(&p.key("address"), "only applies to kind = \"tcp\"");
                    }
                    let port = b.port.clone().unwrap_or_default();
                    if port.is_empty() {
                        self.err(&p, "kind = \"rtu\" needs port = \"/dev/ttyUSB0\"");
                    }
                    let parity = match b.parity.as_deref().unwrap_or("none") {
                        "none" => Parity::None,
                        "even" => Parity::Even,
                        "odd" => Parity::Odd,
                        other => {
                            self.err(
                                &p.key("parity"),
                                format!("unknown parity `{other}` (expected none, even or odd)"),
                            );
                            Parity::None
                        }
                    };
                    let stop_bits = self.int(&p.key("stop_bits"), b.stop_bits, 1, 1, 2) as u8;
                    Link::Rtu {
                        port,
                        baud: self.int(&p.key("baud"), b.baud, 9600, 50, 4_000_000) as u32,
                        parity,
                        data_bits: self.int(&p.key("data_bits"), b.data_bits, 8, 5, 8) as u8,
                        stop_bits,
                    }
                }
                other => {
                    self.err(
                        &p.key("kind"),
                        format!("unknown bus kind `{other}` (expected rtu or tcp)"),
                    );
                    Link::Tcp {
                        address: String::new(),
                    }
                }
            };
            if let Link::Rtu { port, .. } = &link {
                if let Some(other) = out.iter().find(
                    |o: &&Bus| matches!(&o.link, Link::Rtu { port: theirs, .. } if theirs == port),
                ) {
                    self.err(
                        &p.key("port"),
                        format!(
                            "{port} is already bus `{}`: one serial port is one bus (put all its devices on that bus)",
                            other.name
                        ),
                    );
                }
            }
            out.push(Bus {
                name: b.name,
                link,
                timeout: Duration::from_millis(self.int(
                    &p.key("timeout_ms"),
                    b.timeout_ms,
                    500,
                    1,
                    60_000,
                ) as u64),
                retries: self.int(&p.key("retries"), b.retries, 2, 0, 10) as u32,
                inter_request_delay: Duration::from_millis(self.int(
                    &p.key("inter_request_delay_ms"),
                    b.inter_request_delay_ms,
                    0,
                    0,
                    10_000,
                ) as u64),
            });
        }
        out
    }

    fn order<T>(
        &mut self,
        p: &KeyPath,
        v: Option<&str>,
        default: T,
        parse: fn(&str) -> Option<T>,
    ) -> T {
        match v {
            None => default,
            Some(s) => parse(s).unwrap_or_else(|| {
                self.err(p, format!("unknown order `{s}` (expected big or little)"));
                default
            }),
        }
    }

    fn devices(
        &mut self,
        raw: impl Iterator<Item = RawDevice>,
        buses: &[Bus],
        templates: &BTreeMap<String, RawTemplate>,
    ) -> Vec<Device> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, d) in raw.enumerate() {
            let p = KeyPath::default().key("devices").index(i);
            if d.id.is_empty() {
                self.err(&p.key("id"), "must not be empty");
            } else if d.id.contains(['/', '+', '#']) {
                // The id is one level of the MQTT topics (`devices/{device}/…`).
                self.err(&p.key("id"), "must not contain `/`, `+` or `#`");
            } else if !seen.insert(d.id.clone()) {
                self.err(&p.key("id"), format!("duplicate device `{}`", d.id));
            }
            let bus = match buses.iter().position(|b| b.name == d.bus) {
                Some(b) => b,
                None => {
                    self.err(&p.key("bus"), format!("unknown bus `{}`", d.bus));
                    0
                }
            };
            let unit = self.int(&p.key("unit"), Some(d.unit), 1, 1, 247) as u8;
            let byte_order = self.order(
                &p.key("byte_order"),
                d.byte_order.as_deref(),
                ByteOrder::Big,
                ByteOrder::parse,
            );
            let word_order = self.order(
                &p.key("word_order"),
                d.word_order.as_deref(),
                WordOrder::Big,
                WordOrder::parse,
            );
            let max_regs = self.int(
                &p.key("max_registers_per_read"),
                d.max_registers_per_read,
                125,
                1,
                125,
            ) as u16;
            // Points come from the template first, then the device's own; each keeps the key
            // path it was written at so problems point at the right line.
            let mut raw_points: Vec<(KeyPath, RawPoint)> = Vec::new();
            if !d.template.is_empty() {
                match templates.get(&d.template) {
                    Some(t) => raw_points.extend(t.points.iter().enumerate().map(|(j, rp)| {
                        (
                            KeyPath::default()
                                .key("templates")
                                .key(&d.template)
                                .key("points")
                                .index(j),
                            rp.clone(),
                        )
                    })),
                    None => self.err(
                        &p.key("template"),
                        format!("unknown template `{}`", d.template),
                    ),
                }
            }
            raw_points.extend(
                d.points
                    .into_iter()
                    .enumerate()
                    .map(|(j, rp)| (p.key("points").index(j), rp)),
            );
            if raw_points.is_empty() {
                self.err(
                    &p,
                    format!(
                        "device `{}` has no points (give it points or a template)",
                        d.id
                    ),
                );
            }
            let mut ids = HashSet::new();
            let mut points = Vec::new();
            for (pp, rp) in raw_points {
                if !ids.insert(rp.id.clone()) {
                    self.err(
                        &pp.key("id"),
                        format!("duplicate point `{}` in device `{}`", rp.id, d.id),
                    );
                }
                if let Some(pt) = self.point(&pp, rp, byte_order, word_order, max_regs) {
                    points.push((pp, pt));
                }
            }
            self.warn_overlaps(&points);
            out.push(Device {
                id: d.id,
                device_type: d.device_type,
                bus,
                unit,
                poll_interval: Duration::from_millis(self.int(
                    &p.key("poll_interval_ms"),
                    d.poll_interval_ms,
                    1000,
                    10,
                    86_400_000,
                ) as u64),
                max_registers_per_read: max_regs,
                max_gap: self.int(&p.key("max_gap"), d.max_gap, 8, 0, 125) as u16,
                offline_after: self.int(&p.key("offline_after"), d.offline_after, 3, 1, 1000)
                    as u32,
                points: points.into_iter().map(|(_, pt)| pt).collect(),
            });
        }
        out
    }

    fn point(
        &mut self,
        p: &KeyPath,
        rp: RawPoint,
        bo: ByteOrder,
        wo: WordOrder,
        max_regs: u16,
    ) -> Option<Point> {
        let mut ok = true;
        if rp.id.is_empty() {
            self.err(&p.key("id"), "must not be empty");
        }
        let table = Table::parse(&rp.table);
        if table.is_none() {
            self.err(
                &p.key("table"),
                format!(
                    "unknown table `{}` (expected coil, discrete, input or holding)",
                    rp.table
                ),
            );
            ok = false;
        }
        let data_type = DataType::parse(&rp.data_type);
        if data_type.is_none() {
            self.err(
                &p.key("type"),
                format!("unknown type `{}` (expected {TYPES})", rp.data_type),
            );
            ok = false;
        }
        if !(0..=65535).contains(&rp.address) {
            self.err(
                &p.key("address"),
                format!("{} is outside 0..=65535", rp.address),
            );
            ok = false;
        }
        let (Some(table), Some(data_type), true) = (table, data_type, ok) else {
            return None;
        };
        let length = rp.length.unwrap_or(0);
        if data_type == DataType::String {
            if !(1..=max_regs as i64).contains(&length) {
                self.err(
                    &p.key("length"),
                    format!("a string needs length = 1..={max_regs} registers"),
                );
                return None;
            }
        } else if length != 0 {
            self.err(&p.key("length"), "only applies to type = \"string\"");
        }
        if table.is_bits() && data_type != DataType::Bool {
            self.err(
                &p.key("type"),
                format!("a {table} holds bits: type must be bool"),
            );
            return None;
        }
        let bit = match rp.bit {
            None => None,
            Some(b) if !(0..=15).contains(&b) => {
                self.err(&p.key("bit"), format!("{b} is outside 0..=15"));
                None
            }
            Some(_) if data_type != DataType::Bool => {
                self.err(&p.key("bit"), "only applies to type = \"bool\"");
                None
            }
            Some(_) if table.is_bits() => {
                self.err(&p.key("bit"), format!("a {table} is already one bit"));
                None
            }
            Some(b) => Some(b as u8),
        };
        let scale = rp.scale.unwrap_or(1.0);
        if scale == 0.0 || !scale.is_finite() {
            self.err(&p.key("scale"), "must be a non-zero number");
        }
        let offset = rp.offset.unwrap_or(0.0);
        if !offset.is_finite() {
            self.err(&p.key("offset"), "must be a finite number");
        }
        let format = Format {
            table,
            data_type,
            length: length as u16,
            bit,
            byte_order: self.order(
                &p.key("byte_order"),
                rp.byte_order.as_deref(),
                bo,
                ByteOrder::parse,
            ),
            word_order: self.order(
                &p.key("word_order"),
                rp.word_order.as_deref(),
                wo,
                WordOrder::parse,
            ),
            scale,
            offset,
        };
        let width = format.width();
        if rp.address + width as i64 > 65536 {
            self.err(
                &p.key("address"),
                format!("{} registers from {} run past 65535", width, rp.address),
            );
        }
        if !table.is_bits() && width > max_regs {
            self.err(
                &p.key("type"),
                format!("needs {width} registers, more than max_registers_per_read = {max_regs}"),
            );
        }
        let deadband = rp.deadband.unwrap_or(0.0);
        if !(deadband >= 0.0 && deadband.is_finite()) {
            self.err(&p.key("deadband"), "must be 0 or more");
        }
        if let (Some(lo), Some(hi)) = (rp.min, rp.max) {
            if lo > hi {
                self.err(&p.key("min"), format!("min {lo} is above max {hi}"));
            }
        }
        if rp.writable && !matches!(table, Table::Coil | Table::Holding) {
            self.err(
                &p.key("writable"),
                format!("a {table} cannot be written; only coil and holding can"),
            );
        }
        let report_every_s = self.int(
            &p.key("report_every_s"),
            rp.report_every_s,
            60,
            1,
            86_400 * 7,
        );
        Some(Point {
            id: rp.id,
            address: rp.address as u16,
            format,
            unit: rp.unit,
            deadband,
            report_every: Duration::from_secs(report_every_s as u64),
            min: rp.min,
            max: rp.max,
            writable: rp.writable,
        })
    }

    /// Points may share registers (a u16 and its bits), but two different numeric readings of
    /// the same registers are usually a typo.
    fn warn_overlaps(&mut self, points: &[(KeyPath, Point)]) {
        for (i, (pa, a)) in points.iter().enumerate() {
            for (_, b) in &points[..i] {
                let same_table = a.format.table == b.format.table;
                let end = |p: &Point| p.address as u32 + p.format.width() as u32;
                let overlap = (a.address as u32) < end(b) && (b.address as u32) < end(a);
                let bits = a.format.bit.is_some() || b.format.bit.is_some();
                if same_table && overlap && !bits && a.format.data_type != b.format.data_type {
                    self.warn(
                        &pa.key("address"),
                        format!(
                            "point `{}` ({:?}) overlaps point `{}` ({:?}) on the same registers",
                            a.id, a.format.data_type, b.id, b.format.data_type
                        ),
                    );
                }
            }
        }
    }

    fn rules(&mut self, raw: Vec<RawRule>, devices: &[Device]) -> Vec<Rule> {
        let mut seen = HashSet::new();
        let by_id: HashMap<&str, usize> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i))
            .collect();
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let p = KeyPath::default().key("rules").index(i);
            if r.id.is_empty() {
                self.err(&p.key("id"), "must not be empty");
            } else if !seen.insert(r.id.clone()) {
                self.err(&p.key("id"), format!("duplicate rule `{}`", r.id));
            }
            let Some(&device) = by_id.get(r.device.as_str()) else {
                self.err(&p.key("device"), format!("unknown device `{}`", r.device));
                continue;
            };
            let Some(point) = devices[device]
                .points
                .iter()
                .position(|pt| pt.id == r.point)
            else {
                self.err(
                    &p.key("point"),
                    format!("device `{}` has no point `{}`", r.device, r.point),
                );
                continue;
            };
            // Every number of a rule must be finite: `threshold = nan` never compares true, and
            // `inf` never false.
            for (key, x) in [
                ("threshold", r.threshold),
                ("clear", r.clear),
                ("low", r.low),
                ("high", r.high),
                ("per_s", r.per_s),
            ] {
                if x.is_some_and(|x| !x.is_finite()) {
                    self.err(&p.key(key), "must be a finite number");
                }
            }
            // Only `stale` watches a point of any type; the others compare numbers, which a
            // string point never has: such a rule could never fire.
            let pt = &devices[device].points[point];
            if pt.format.data_type == DataType::String && r.kind != "stale" {
                self.err(
                    &p.key("kind"),
                    format!(
                        "`{}` compares numbers, but point `{}` is a string: it could never fire (only `stale` watches a string)",
                        r.kind, r.point
                    ),
                );
            }
            let need = |v: &mut Self, x: Option<f64>, key: &str| -> f64 {
                x.unwrap_or_else(|| {
                    v.err(&p, format!("kind = \"{}\" needs {key}", r.kind));
                    0.0
                })
            };
            let kind = match r.kind.as_str() {
                "above" => {
                    let threshold = need(self, r.threshold, "threshold");
                    let clear = r.clear.unwrap_or(threshold);
                    if clear > threshold {
                        self.err(
                            &p.key("clear"),
                            "for `above`, clear must not be above threshold",
                        );
                    }
                    RuleKind::Above { threshold, clear }
                }
                "below" => {
                    let threshold = need(self, r.threshold, "threshold");
                    let clear = r.clear.unwrap_or(threshold);
                    if clear < threshold {
                        self.err(
                            &p.key("clear"),
                            "for `below`, clear must not be below threshold",
                        );
                    }
                    RuleKind::Below { threshold, clear }
                }
                "outside" => {
                    let low = need(self, r.low, "low");
                    let high = need(self, r.high, "high");
                    if low >= high {
                        self.err(&p.key("low"), "low must be below high");
                    }
                    RuleKind::Outside {
                        low,
                        high,
                        clear: r.clear,
                    }
                }
                "equals" => RuleKind::Equals {
                    threshold: need(self, r.threshold, "threshold"),
                },
                "rate" => {
                    let per_s = need(self, r.per_s, "per_s");
                    // A change of at least a negative rate is every sample: raised at once,
                    // for ever.
                    if per_s <= 0.0 {
                        self.err(&p.key("per_s"), "must be above 0");
                    }
                    RuleKind::Rate { per_s }
                }
                "stale" => {
                    if r.for_ms.is_none() {
                        self.err(&p, "kind = \"stale\" needs for_ms");
                    }
                    RuleKind::Stale
                }
                other => {
                    self.err(
                        &p.key("kind"),
                        format!("unknown rule kind `{other}` (expected above, below, outside, equals, rate or stale)"),
                    );
                    continue;
                }
            };
            let name = r.priority.as_deref().unwrap_or("normal");
            let priority = Priority::parse(name).unwrap_or_else(|| {
                self.err(
                    &p.key("priority"),
                    format!("unknown priority `{name}` (expected emergency, high or normal)"),
                );
                Priority::Normal
            });
            out.push(Rule {
                id: r.id,
                device,
                point,
                kind,
                for_ms: self.int(&p.key("for_ms"), r.for_ms, 0, 0, 86_400_000) as u64,
                priority,
                message: r.message,
            });
        }
        out
    }
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large config: a head, 4,000 devices in both styles (inline points and
    /// `[[devices.points]]`), and rules and a table after them.
    fn large() -> String {
        let mut t = String::from(
            "[gateway]\nid = \"big\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n\
             [templates.m]\npoints = [\n  { id = \"v\", table = \"input\", address = 0, type = \"f32\" },\n]\n",
        );
        for i in 0..4000 {
            t += &format!(
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
    }
}
