//! The peer on the same load: Node-RED with node-red-contrib-modbus (`benches/peer`), polling
//! the same simulator and publishing to the same broker, so a bench can print the gateway's
//! figures as a ratio to a tool our users compare us with, measured in the same run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::load::{POINTS, UNITS};
use super::process::{free_port, Proc};

/// Where the peer's npm packages are (`npm ci` there on first use).
fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer")
}

/// `host:port` of the broker (`EDGE_TEST_MQTT_ADDR`), the port 1883 when not given.
fn broker(mqtt: &str) -> (&str, u16) {
    match mqtt.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().expect("EDGE_TEST_MQTT_ADDR's port")),
        None => (mqtt, 1883),
    }
}

/// What the peer is asked to do (`BENCH_NODE_RED`).
pub enum Job {
    /// `1`: the telemetry alone, as lean as a flow goes (no store, no MySQL, no rules: the
    /// peer does less work than the gateway).
    Lean,
    /// `same`: the gateway's whole job on this load — the same telemetry to MQTT, every value
    /// stored in a local SQLite history (`history`) and sent to MySQL (the server of `mysql`,
    /// `EDGE_TEST_MYSQL_URL`, database [`PEER_DB`]), and the store bench's two rules a device.
    Same { mysql: String, history: PathBuf },
}

/// The MySQL database the peer's `same` job writes to (made fresh for a run, dropped after).
pub const PEER_DB: &str = "edge_bench_nr";

/// The flow a Node-RED user would build for `job`. The telemetry part, as lean as it goes: per
/// bus a Modbus TCP client, per unit a read of its POINTS holding registers every second, one
/// function node that makes the gateway's telemetry JSON (`{"ts", "points": {id: {v, q}}}`)
/// and one MQTT out node at QoS 1.
pub fn flow(buses: usize, sim: u16, mqtt: &str, topic: &str, job: &Job) -> Value {
    let (host, port) = broker(mqtt);
    let mut nodes = vec![
        json!({"id": "tab", "type": "tab", "label": "bench"}),
        json!({"id": "broker", "type": "mqtt-broker", "broker": host, "port": port.to_string(),
            "clientid": topic, "autoConnect": true, "usetls": false, "protocolVersion": "4",
            "keepalive": "60", "cleansession": true}),
        json!({"id": "telemetry", "type": "function", "z": "tab", "outputs": 1,
            "func": format!("const points = {{}};\n\
                msg.payload.forEach((v, i) => {{ points['r' + i] = {{ v, q: 'good' }}; }});\n\
                msg.payload = JSON.stringify({{ ts: new Date().toISOString(), points }});\n\
                msg.topic = '{topic}/' + msg.topic + '/telemetry';\nreturn msg;"),
            "wires": [["out"]]}),
        json!({"id": "out", "type": "mqtt out", "z": "tab", "topic": "", "qos": "1",
            "retain": "false", "broker": "broker", "wires": []}),
    ];
    let mut wires = vec!["telemetry"];
    if let Job::Same { mysql, history } = job {
        nodes.extend(same_job(mysql, history));
        wires.extend(["history", "rows", "rules"]);
    }
    for b in 0..buses {
        nodes.push(
            json!({"id": format!("client{b}"), "type": "modbus-client", "clienttype": "tcp",
            "bufferCommands": true, "tcpHost": "127.0.0.1", "tcpPort": sim.to_string(),
            "tcpType": "DEFAULT", "unit_id": "1", "commandDelay": "1", "clientTimeout": "1000",
            "reconnectOnTimeout": true, "reconnectTimeout": "2000",
            "parallelUnitIdsAllowed": true}),
        );
        for u in 1..=UNITS {
            nodes.push(
                json!({"id": format!("read{b}_{u}"), "type": "modbus-read", "z": "tab",
                "topic": format!("b{b}u{u}"), "unitid": u.to_string(),
                "dataType": "HoldingRegister", "adr": "0", "quantity": POINTS.to_string(),
                "rate": "1", "rateUnit": "s", "server": format!("client{b}"),
                // After the tables are made (the inject below, at 0.1 s).
                "delayOnStart": true, "startDelayTime": "2",
                "showStatusActivities": false, "logIOActivities": false, "showErrors": false,
                "useIOFile": false, "useIOForPayload": false, "emptyMsgOnFail": false,
                "wires": [wires, []]}),
            );
        }
    }
    Value::Array(nodes)
}

/// The nodes that do the rest of the gateway's job with each unit's read (`msg.topic` its
/// device id, `msg.payload` its POINTS values), each as a Node-RED user would: statements built
/// as text, one insert of a read's rows into SQLite (node-red-node-sqlite, in WAL mode with
/// `synchronous = NORMAL`, as the gateway's store runs) and one into MySQL
/// (node-red-node-mysql) — the gateway batches both further — and one function node for the
/// rules (a band on `r0` that never fires, a stale check on `r1` kept in its context).
fn same_job(mysql: &str, history: &Path) -> Vec<Value> {
    let opts = mysql_async::Opts::from_url(mysql).expect("EDGE_TEST_MYSQL_URL");
    vec![
        json!({"id": "sqlite", "type": "sqlitedb", "db": history.to_str().unwrap(), "mode": "RWC"}),
        json!({"id": "schema", "type": "inject", "z": "tab", "once": true, "onceDelay": 0.1,
            "repeat": "", "topic": "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                CREATE TABLE IF NOT EXISTS history (device TEXT NOT NULL, point TEXT NOT NULL, \
                ts INTEGER NOT NULL, value, quality TEXT NOT NULL); \
                CREATE INDEX IF NOT EXISTS history_point_ts ON history (device, point, ts);",
            "payload": "", "payloadType": "str", "props": [{"p": "topic", "vt": "str"}],
            "wires": [["setup"]]}),
        json!({"id": "setup", "type": "sqlite", "z": "tab", "mydb": "sqlite", "sqlquery": "batch",
            "wires": [[]]}),
        json!({"id": "history", "type": "function", "z": "tab", "outputs": 1,
            "func": "const ts = Date.now();\n\
                const rows = msg.payload.map((v, i) => `('${msg.topic}','r${i}',${ts},${v},'good')`);\n\
                msg.topic = 'INSERT INTO history (device, point, ts, value, quality) VALUES ' + rows.join(',');\n\
                return msg;",
            "wires": [["store"]]}),
        json!({"id": "store", "type": "sqlite", "z": "tab", "mydb": "sqlite",
            "sqlquery": "msg.topic", "wires": [[]]}),
        json!({"id": "mysqldb", "type": "MySQLdatabase", "host": opts.ip_or_hostname(),
            "port": opts.tcp_port().to_string(), "db": PEER_DB, "tz": "", "charset": "UTF8"}),
        json!({"id": "rows", "type": "function", "z": "tab", "outputs": 1,
            "func": "const ts = new Date().toISOString().replace('T', ' ').slice(0, 23);\n\
                const rows = msg.payload.map((v, i) => `('nr-bench','${msg.topic}','r${i}','${ts}','${v}','good')`);\n\
                return { payload: [], topic: 'INSERT INTO telemetry (gateway_id, device_id, point_id, ts, value, quality) VALUES ' \
                    + rows.join(',') + ' ON DUPLICATE KEY UPDATE value = VALUES(value), quality = VALUES(quality)' };",
            "wires": [["upstream"]]}),
        json!({"id": "upstream", "type": "mysql", "z": "tab", "mydb": "mysqldb", "wires": [[]]}),
        json!({"id": "rules", "type": "function", "z": "tab", "outputs": 1,
            "func": "const now = Date.now();\n\
                const alarms = [];\n\
                const r0 = msg.payload[0];\n\
                if (r0 < -1 || r0 > 70000) alarms.push({ rule: msg.topic + '-band', value: r0 });\n\
                const last = context.get(msg.topic) || { v: null, since: now };\n\
                if (last.v !== msg.payload[1]) { last.v = msg.payload[1]; last.since = now; }\n\
                else if (now - last.since > 60000) alarms.push({ rule: msg.topic + '-stale' });\n\
                context.set(msg.topic, last);\n\
                return alarms.length ? { topic: msg.topic, payload: alarms } : null;",
            "wires": [[]]}),
    ]
}

/// The MySQL user and password of the `same` job, in Node-RED's credentials file (plain
/// JSON: the settings say `credentialSecret: false`).
fn credentials(job: &Job) -> Value {
    match job {
        Job::Lean => json!({}),
        Job::Same { mysql, .. } => {
            let opts = mysql_async::Opts::from_url(mysql).expect("EDGE_TEST_MYSQL_URL");
            json!({"mysqldb": {"user": opts.user().unwrap_or("root"), "password": opts.pass().unwrap_or("")}})
        }
    }
}

/// Node-RED running `flow` from `work` (its user directory), once its packages are installed.
pub fn node_red(work: &Path, flow: &Value, credentials: &Value) -> Proc {
    let peer = dir();
    if !peer.join("node_modules/node-red").is_dir() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&peer)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm ci in {} failed", peer.display());
    }
    std::fs::create_dir_all(work).unwrap();
    let flows = work.join("flows.json");
    std::fs::write(&flows, flow.to_string()).unwrap();
    std::fs::write(work.join("flows_cred.json"), credentials.to_string()).unwrap();
    // Its editor on the loopback only (Node-RED listens on every interface by default).
    std::fs::write(
        work.join("settings.js"),
        format!(
            "module.exports = {{ uiHost: \"127.0.0.1\", uiPort: {}, credentialSecret: false }};\n",
            free_port()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(work.join("node-red.log")).unwrap();
    Proc(
        Command::new("node")
            .arg(peer.join("node_modules/node-red/red.js"))
            .args(["-u", work.to_str().unwrap()])
            .arg(&flows)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("node (Node.js) to run Node-RED"),
    )
}

/// Counts the messages published under `{topic}/#`: what the peer delivered.
pub fn count_messages(mqtt: &str, topic: &str) -> Arc<AtomicU64> {
    let (host, port) = broker(mqtt);
    let mut opts = rumqttc::MqttOptions::new(format!("{topic}-counter"), host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = rumqttc::Client::new(opts, 16);
    client
        .subscribe(format!("{topic}/#"), rumqttc::QoS::AtMostOnce)
        .unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let counted = n.clone();
    std::thread::spawn(move || {
        let _client = client;
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => {
                    counted.fetch_add(1, Relaxed);
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    n
}

/// Node-RED on the bench's load, with the count of what it delivered.
pub struct Peer {
    pub proc: Proc,
    pub messages: Arc<AtomicU64>,
    pub job: Job,
}

impl Peer {
    /// With `BENCH_NODE_RED` (`1` or `same`, see [`Job`]) and a broker: Node-RED polling
    /// `buses` × [`UNITS`] of the simulator at `sim`, once its first messages reach the broker
    /// (60 s at most).
    pub fn start(work: &Path, buses: usize, sim: u16) -> Option<Peer> {
        let job = match std::env::var("BENCH_NODE_RED").ok()?.as_str() {
            "" | "0" => return None,
            "1" => Job::Lean,
            "same" => {
                let mysql = std::env::var("EDGE_TEST_MYSQL_URL")
                    .expect("BENCH_NODE_RED=same needs EDGE_TEST_MYSQL_URL");
                super::mysql(&mysql, &format!("DROP DATABASE IF EXISTS {PEER_DB}"));
                super::mysql(&mysql, &format!("CREATE DATABASE {PEER_DB}"));
                // The gateway's own `edge_telemetry`, under another name.
                super::mysql(
                    &mysql,
                    &format!(
                        "CREATE TABLE {PEER_DB}.telemetry (gateway_id VARCHAR(64) NOT NULL, \
                         device_id VARCHAR(190) NOT NULL, point_id VARCHAR(190) NOT NULL, \
                         ts DATETIME(3) NOT NULL, value TEXT NULL, quality VARCHAR(8) NOT NULL, \
                         PRIMARY KEY (gateway_id, device_id, point_id, ts))"
                    ),
                );
                std::fs::create_dir_all(work).unwrap();
                Job::Same {
                    mysql,
                    history: work.join("history.db"),
                }
            }
            other => panic!("BENCH_NODE_RED={other}: 1 (lean), same (the whole job) or 0 (none)"),
        };
        let mqtt =
            std::env::var("EDGE_TEST_MQTT_ADDR").expect("BENCH_NODE_RED needs EDGE_TEST_MQTT_ADDR");
        let topic = format!("nr-bench-{}", std::process::id());
        let messages = count_messages(&mqtt, &topic);
        let proc = node_red(
            work,
            &flow(buses, sim, &mqtt, &topic, &job),
            &credentials(&job),
        );
        let start = std::time::Instant::now();
        while messages.load(Relaxed) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "Node-RED published nothing in 60 s; its log:\n{}",
                std::fs::read_to_string(work.join("node-red.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Some(Peer {
            proc,
            messages,
            job,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// Rows the `same` job has stored so far: in its SQLite history, in MySQL.
    pub fn stored(&self) -> Option<(u64, u64)> {
        let Job::Same { mysql, history } = &self.job else {
            return None;
        };
        let sqlite = rusqlite::Connection::open_with_flags(
            history,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| c.query_row("SELECT count(*) FROM history", [], |r| r.get::<_, i64>(0)))
        .map_or(0, i64::unsigned_abs);
        let upstream = super::mysql(mysql, &format!("SELECT count(*) FROM {PEER_DB}.telemetry"));
        Some((sqlite, upstream.unwrap_or(0)))
    }

    /// What the peer does, for the bench's line.
    pub fn doing(&self) -> &'static str {
        match self.job {
            Job::Lean => "to MQTT only",
            Job::Same { .. } => "to MQTT, SQLite and MySQL, with the rules",
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
        if let Job::Same { mysql, .. } = &self.job {
            super::mysql(mysql, &format!("DROP DATABASE IF EXISTS {PEER_DB}"));
        }
    }
}
