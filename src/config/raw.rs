//! The raw config: exactly the TOML, nothing checked beyond shape (unknown keys refused).
//! Enumerations stay strings so that a bad one is reported by validation with its key path,
//! next to every other problem.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) gateway: Option<RawGateway>,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
    #[serde(default)]
    pub(super) push: RawPush,
    #[serde(default)]
    pub(super) buses: Vec<RawBus>,
    #[serde(default)]
    pub(super) devices: Vec<RawDevice>,
    #[serde(default)]
    pub(super) templates: BTreeMap<String, RawTemplate>,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
    #[serde(default)]
    pub(super) calculated: Vec<RawCalculated>,
    #[serde(default)]
    pub(super) events: RawEvents,
    #[serde(default)]
    pub(super) store: RawStore,
    pub(super) mysql: Option<RawMysql>,
    pub(super) mqtt: Option<RawMqtt>,
    #[serde(default)]
    pub(super) opcua: RawOpcua,
    #[serde(default)]
    pub(super) modbus_server: RawModbusServer,
    #[serde(default)]
    pub(super) fleet: RawFleet,
    #[serde(default)]
    pub(super) notifiers: Vec<RawNotifier>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) id: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) log_level: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<String>,
    pub(super) tls: Option<String>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) session_idle_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) role: String,
    #[serde(default)]
    pub(super) password_hash: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPush {
    pub(super) interval_ms: Option<i64>,
    pub(super) queue_capacity: Option<i64>,
    pub(super) overflow: Option<String>,
    pub(super) max_clients: Option<i64>,
    pub(super) heartbeat_interval_s: Option<i64>,
    pub(super) heartbeat_timeout_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBus {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) kind: String,
    pub(super) port: Option<String>,
    pub(super) baud: Option<i64>,
    pub(super) parity: Option<String>,
    pub(super) data_bits: Option<i64>,
    pub(super) stop_bits: Option<i64>,
    pub(super) address: Option<String>,
    pub(super) timeout_ms: Option<i64>,
    pub(super) retries: Option<i64>,
    pub(super) inter_request_delay_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    #[serde(default)]
    pub(super) id: String,
    #[serde(rename = "type", default)]
    pub(super) device_type: String,
    #[serde(default)]
    pub(super) bus: String,
    pub(super) unit: Option<i64>,
    pub(super) poll_interval_ms: Option<i64>,
    pub(super) byte_order: Option<String>,
    pub(super) word_order: Option<String>,
    pub(super) max_registers_per_read: Option<i64>,
    pub(super) max_gap: Option<i64>,
    pub(super) offline_after: Option<i64>,
    #[serde(default)]
    pub(super) template: String,
    #[serde(default)]
    pub(super) points: Vec<RawPoint>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoint {
    #[serde(default)]
    pub(super) id: String,
    #[serde(default)]
    pub(super) table: String,
    pub(super) address: Option<i64>,
    #[serde(rename = "type", default)]
    pub(super) data_type: String,
    pub(super) length: Option<i64>,
    pub(super) bit: Option<i64>,
    pub(super) scale: Option<f64>,
    pub(super) offset: Option<f64>,
    #[serde(default)]
    pub(super) unit: String,
    pub(super) deadband: Option<f64>,
    pub(super) report_every_s: Option<i64>,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
    #[serde(default)]
    pub(super) writable: bool,
    pub(super) byte_order: Option<String>,
    pub(super) word_order: Option<String>,
    pub(super) poll_interval_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    #[serde(default)]
    pub(super) points: Vec<RawPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) id: String,
    #[serde(default)]
    pub(super) device: String,
    #[serde(default)]
    pub(super) point: String,
    #[serde(default)]
    pub(super) kind: String,
    pub(super) threshold: Option<f64>,
    pub(super) clear: Option<f64>,
    pub(super) low: Option<f64>,
    pub(super) high: Option<f64>,
    pub(super) per_s: Option<f64>,
    pub(super) for_ms: Option<i64>,
    /// `expr` rules: the on-delay (`for_ms` by its SPEC name for them).
    pub(super) on_delay_ms: Option<i64>,
    pub(super) clear_for_ms: Option<i64>,
    #[serde(default)]
    pub(super) expr: String,
    pub(super) priority: Option<String>,
    #[serde(default)]
    pub(super) message: String,
}

impl RawRule {
    /// The numbers a rule's kind may take, by key.
    pub(super) fn numbers(&self) -> [(&'static str, Option<f64>); 5] {
        [
            ("threshold", self.threshold),
            ("clear", self.clear),
            ("low", self.low),
            ("high", self.high),
            ("per_s", self.per_s),
        ]
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCalculated {
    #[serde(default)]
    pub(super) device: String,
    #[serde(default)]
    pub(super) point: String,
    #[serde(default)]
    pub(super) expr: String,
    #[serde(default)]
    pub(super) unit: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    pub(super) max_per_device_per_s: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) history_retention_days: Option<i64>,
    pub(super) max_db_mb: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMysql {
    #[serde(default)]
    pub(super) url: String,
    pub(super) batch_size: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    #[serde(default)]
    pub(super) url: String,
    pub(super) client_id: Option<String>,
    pub(super) topic_prefix: Option<String>,
    pub(super) qos: Option<i64>,
    #[serde(default)]
    pub(super) allow_writes: bool,
    pub(super) command_max_age_s: Option<i64>,
    pub(super) format: Option<String>,
    pub(super) group_id: Option<String>,
    pub(super) edge_node_id: Option<String>,
    pub(super) primary_host_id: Option<String>,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOpcua {
    #[serde(default)]
    pub(super) enabled: bool,
    pub(super) listen: Option<String>,
    pub(super) security: Option<Vec<String>>,
    #[serde(default)]
    pub(super) anonymous: bool,
    pub(super) pki_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) trust_client_certs: bool,
    pub(super) max_sessions: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbusServer {
    #[serde(default)]
    pub(super) enabled: bool,
    pub(super) listen: Option<String>,
    pub(super) allowed_clients: Option<Vec<String>>,
    #[serde(default)]
    pub(super) allow_writes: bool,
    pub(super) max_connections: Option<i64>,
    pub(super) max_requests_per_s: Option<i64>,
    #[serde(default)]
    pub(super) units: Vec<RawServerUnit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerUnit {
    pub(super) unit: Option<i64>,
    #[serde(default)]
    pub(super) device: String,
    pub(super) layout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    #[serde(default)]
    pub(super) public_keys: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifier {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) kind: String,
    pub(super) url: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) smtp: Option<String>,
    pub(super) starttls: Option<bool>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) from: Option<String>,
    pub(super) to: Option<Vec<String>>,
    pub(super) min_priority: Option<String>,
    #[serde(default)]
    pub(super) devices: Vec<String>,
    pub(super) repeat_unacked_s: Option<i64>,
    pub(super) escalate_after_s: Option<i64>,
    pub(super) escalate_to: Option<String>,
}
