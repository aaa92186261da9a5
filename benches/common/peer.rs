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

/// The flow a Node-RED user would build for the gateway's job, as lean as it goes: per bus a
/// Modbus TCP client, per unit a read of its POINTS holding registers every second, one
/// function node that makes the gateway's telemetry JSON (`{"ts", "points": {id: {v, q}}}`)
/// and one MQTT out node at QoS 1. No store, no MySQL, no rules: the peer does less work.
pub fn flow(buses: usize, sim: u16, mqtt: &str, topic: &str) -> Value {
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
                "rate": "1", "rateUnit": "s", "delayOnStart": false, "server": format!("client{b}"),
                "showStatusActivities": false, "logIOActivities": false, "showErrors": false,
                "useIOFile": false, "useIOForPayload": false, "emptyMsgOnFail": false,
                "wires": [["telemetry"], []]}),
            );
        }
    }
    Value::Array(nodes)
}

/// Node-RED running `flow` from `work` (its user directory), once its packages are installed.
pub fn node_red(work: &Path, flow: &Value) -> Proc {
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
}

impl Peer {
    /// With `BENCH_NODE_RED=1` and a broker: Node-RED polling `buses` × [`UNITS`] of the
    /// simulator at `sim`, once its first messages reach the broker (60 s at most).
    pub fn start(work: &Path, buses: usize, sim: u16) -> Option<Peer> {
        if std::env::var("BENCH_NODE_RED").ok().as_deref() != Some("1") {
            return None;
        }
        let mqtt =
            std::env::var("EDGE_TEST_MQTT_ADDR").expect("BENCH_NODE_RED needs EDGE_TEST_MQTT_ADDR");
        let topic = format!("nr-bench-{}", std::process::id());
        let messages = count_messages(&mqtt, &topic);
        let proc = node_red(work, &flow(buses, sim, &mqtt, &topic));
        let start = std::time::Instant::now();
        while messages.load(Relaxed) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "Node-RED published nothing in 60 s; its log:\n{}",
                std::fs::read_to_string(work.join("node-red.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Some(Peer { proc, messages })
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}
