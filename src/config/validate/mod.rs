//! Validation: the raw config checked into the domain types, every problem collected by key
//! path (their lines are found afterwards, only when there are any). Buses, devices and points
//! are checked in `devices`, rules in `rules`.

mod calculated;
mod devices;
mod north;
mod notifiers;
mod rules;

use std::collections::HashSet;
use std::time::Duration;

use super::keypath::KeyPath;
use super::pieces::Pieces;
use super::raw::{
    RawBus, RawConfig, RawDevice, RawGateway, RawHttp, RawMqtt, RawPoint, RawPush, RawRule,
    RawTemplate, RawUser,
};
use super::{
    BTreeMap, Bus, ByteOrder, Config, DataType, Device, Events, Format, Gateway, Http, HttpTls,
    Link, Mqtt, Mysql, Overflow, Parity, PathBuf, Point, Priority, Push, Role, Rule, RuleKind,
    Secret, Sparkplug, Store, Table, User, WordOrder,
};

/// Checks the raw config into the domain types, collecting every problem by key path (their
/// lines are found afterwards, only when there are any).
/// What a required key that is missing or empty is told.
const REQUIRED: &str = "required: missing or empty";

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<(KeyPath, String)>,
    pub(super) warnings: Vec<(KeyPath, String)>,
}

const TYPES: &str = "bool, u16, i16, u32, i32, u64, i64, f32, f64, string";

impl Validator {
    fn err(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.problems.push((path.clone(), message.into()));
    }

    /// A required key, missing or empty: named as such. Required keys are read as empty when
    /// absent (not a serde error), so the rest of the file is still checked in the same pass.
    fn required(&mut self, path: &KeyPath, empty: bool) -> bool {
        if empty {
            self.err(path, REQUIRED);
        }
        empty
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

    /// A whole number of seconds in `1..=hi`.
    fn secs(&mut self, path: &KeyPath, v: Option<i64>, default: i64, hi: i64) -> Duration {
        Duration::from_secs(self.int(path, v, default, 1, hi) as u64)
    }

    /// `more` brings devices after `raw.devices` (a large config's, a piece at a time).
    pub(super) fn config(&mut self, raw: RawConfig, more: &mut Pieces<'_>) -> Config {
        let root = KeyPath::default();
        let gateway = self.gateway(raw.gateway, &root.key("gateway"));
        let http = self.http(raw.http, &root.key("http"));
        let users = self.users(raw.users);
        let push = self.push(raw.push, &root.key("push"));
        let buses = self.buses(raw.buses);
        let templates = raw.templates;
        let mut devices = self.devices(
            std::iter::once(raw.devices).chain(more).flatten(),
            &buses,
            &templates,
        );
        let calculated = self.calculated(raw.calculated, &mut devices);
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
            if self.required(&p.key("url"), m.url.is_empty()) {
            } else if !m.url.starts_with("mysql://") {
                self.err(&p.key("url"), "must start with mysql://");
            }
            Mysql {
                url: Secret(m.url),
                batch_size: self.int(&p.key("batch_size"), m.batch_size, 500, 1, 10_000) as usize,
            }
        });
        let mqtt = raw
            .mqtt
            .map(|m| self.mqtt(m, &root.key("mqtt"), &gateway.id));
        let opcua = self.opcua(raw.opcua, &root.key("opcua"), &gateway.data_dir);
        self.opcua_names(&opcua, &gateway.id, &devices);
        let modbus_server =
            self.modbus_server(raw.modbus_server, &root.key("modbus_server"), &devices);
        let fleet = self.fleet(raw.fleet, &root.key("fleet"));
        let notifiers = self.notifiers(raw.notifiers, &devices, &buses);
        Config {
            gateway,
            http,
            users,
            push,
            buses,
            devices,
            rules,
            calculated,
            events,
            store,
            mysql,
            mqtt,
            opcua,
            modbus_server,
            fleet,
            notifiers,
        }
    }

    /// `[mqtt]`: the URL, topic prefix, QoS, writes and their age limit, and the format.
    fn mqtt(&mut self, m: RawMqtt, p: &KeyPath, gateway_id: &str) -> Mqtt {
        let sparkplug = self.mqtt_format(p, &m, gateway_id);
        if self.required(&p.key("url"), m.url.is_empty()) {
        } else if !(m.url.starts_with("mqtt://") || m.url.starts_with("mqtts://")) {
            self.err(&p.key("url"), "must start with mqtt:// or mqtts://");
        }
        let topic_prefix = m.topic_prefix.unwrap_or_else(|| "edge".into());
        if topic_prefix.contains(['+', '#']) || topic_prefix.is_empty() {
            self.err(
                &p.key("topic_prefix"),
                "must be non-empty and free of + and #",
            );
        }
        let client_identity = match (m.client_cert.clone(), m.client_key.clone()) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                if !m.url.starts_with("mqtts://") {
                    self.err(&p.key("client_cert"), "a client certificate needs mqtts://");
                }
                Some((c, k))
            }
            (Some(_), None) => {
                self.err(
                    &p.key("client_key"),
                    "required with `client_cert`: its PEM key",
                );
                None
            }
            (None, Some(_)) => {
                self.err(
                    &p.key("client_cert"),
                    "required with `client_key`: the PEM certificate",
                );
                None
            }
        };
        Mqtt {
            url: Secret(m.url),
            client_id: m.client_id.unwrap_or_else(|| gateway_id.to_string()),
            topic_prefix,
            qos: self.int(&p.key("qos"), m.qos, 1, 0, 2) as u8,
            allow_writes: m.allow_writes,
            command_max_age: self.secs(
                &p.key("command_max_age_s"),
                m.command_max_age_s,
                30,
                86_400,
            ),
            sparkplug,
            client_identity,
        }
    }

    /// SPEC's `format` and its Sparkplug ids: `Some` for `sparkplug_b`. Sparkplug ids become
    /// topic levels, so `/ + #` are refused in each; `group_id` is required.
    fn mqtt_format(&mut self, p: &KeyPath, m: &RawMqtt, gateway_id: &str) -> Option<Sparkplug> {
        for (key, id) in [
            ("group_id", &m.group_id),
            ("edge_node_id", &m.edge_node_id),
            ("primary_host_id", &m.primary_host_id),
        ] {
            if id.as_deref().is_some_and(|s| s.contains(['/', '+', '#'])) {
                self.err(&p.key(key), "a Sparkplug id must be free of / + and #");
            }
        }
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        match m.format.as_deref().unwrap_or("json") {
            "json" => None,
            "sparkplug_b" => {
                let group_id = non_empty(&m.group_id).unwrap_or_else(|| {
                    self.err(&p.key("group_id"), "required with format = \"sparkplug_b\"");
                    String::new()
                });
                Some(Sparkplug {
                    group_id,
                    edge_node_id: non_empty(&m.edge_node_id)
                        .unwrap_or_else(|| gateway_id.to_string()),
                    primary_host_id: non_empty(&m.primary_host_id),
                })
            }
            other => {
                self.err(
                    &p.key("format"),
                    format!("unknown format `{other}` (expected json or sparkplug_b)"),
                );
                None
            }
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
        let id = if let Some(id) = id {
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
        } else {
            self.err(p, "gateway.id is required");
            String::new()
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
        let tls = match (raw.tls.as_deref().unwrap_or("off"), raw.cert, raw.key) {
            ("off", None, None) => HttpTls::Off,
            ("self_signed", None, None) => HttpTls::SelfSigned,
            ("files", Some(cert), Some(key)) => HttpTls::Files { cert, key },
            ("files", cert, _) => {
                let missing = if cert.is_none() { "cert" } else { "key" };
                self.err(&p.key(missing), "required with tls = \"files\": a PEM file");
                HttpTls::Off
            }
            ("off" | "self_signed", cert, _) => {
                let set = if cert.is_some() { "cert" } else { "key" };
                self.err(&p.key(set), "only with tls = \"files\"");
                HttpTls::Off
            }
            (other, _, _) => {
                self.err(
                    &p.key("tls"),
                    format!("unknown tls `{other}` (expected off, self_signed or files)"),
                );
                HttpTls::Off
            }
        };
        let session_idle = self.secs(
            &p.key("session_idle_s"),
            raw.session_idle_s,
            3600,
            7 * 86_400,
        );
        Http {
            listen,
            allowed_origins: raw.allowed_origins,
            allowed_hosts,
            tls,
            session_idle,
        }
    }

    fn users(&mut self, raw: Vec<RawUser>) -> Vec<User> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let p = KeyPath::default().key("users").index(i);
            if self.required(&p.key("name"), u.name.is_empty()) {
            } else if !seen.insert(u.name.clone()) {
                self.err(&p.key("name"), format!("duplicate user `{}`", u.name));
            }
            let role = match u.role.as_str() {
                "admin" => Role::Admin,
                "viewer" => Role::Viewer,
                "" => {
                    self.required(&p.key("role"), true);
                    Role::Viewer
                }
                other => {
                    self.err(
                        &p.key("role"),
                        format!("unknown role `{other}` (expected admin or viewer)"),
                    );
                    Role::Viewer
                }
            };
            if self.required(&p.key("password_hash"), u.password_hash.is_empty()) {
            } else if u.password_hash == super::PASSWORD_PLACEHOLDER {
                self.err(
                    &p.key("password_hash"),
                    format!(
                        "no password set: run `sudo edge-gateway user add {} --role {} --config PATH`",
                        u.name,
                        u.role
                    ),
                );
            } else if !u.password_hash.starts_with("$argon2") {
                self.err(
                    &p.key("password_hash"),
                    "must be an argon2 PHC string (make one with `edge-gateway hash-password`, or \
                     set the user with `edge-gateway user add NAME --role ROLE --config PATH`)",
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
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}
