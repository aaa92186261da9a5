//! The OPC UA server against two clients we did not write (asyncua, `tests/interop/opcua_client.py`,
//! and node-opcua, `tests/interop/opcua_client.mjs`):
//! browse, read with DataType, EngineeringUnits and StatusCode, a subscription's data changes,
//! sessions over Basic256Sha256 SignAndEncrypt with the dashboard's users, an admin's writes
//! on the audited strict path and everyone else's refused.
#![cfg(feature = "opcua")]

mod common;

use std::process::Command;

use common::wsclient::users_and_push;
use common::*;
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::Gateway;
use serde_json::Value as Json;

/// A client we did not write, run as a program: asyncua (Python) or node-opcua (Node.js).
#[derive(Clone)]
enum Peer {
    Asyncua(String),
    NodeOpcua(String),
}

fn asyncua() -> Option<Peer> {
    python().map(Peer::Asyncua)
}

fn node_opcua() -> Option<Peer> {
    let node = std::env::var("EDGE_TEST_NODE")
        .ok()
        .filter(|p| !p.is_empty());
    let installed = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/node_modules/node-opcua-client"
    ))
    .is_dir();
    if node.is_none() || !installed {
        skipped("EDGE_TEST_NODE is not set or node-opcua-client is not installed (./scripts/test does both)");
        return None;
    }
    node.map(Peer::NodeOpcua)
}

impl Peer {
    fn command(&self) -> Command {
        let (program, script) = match self {
            Peer::Asyncua(p) => (p, "opcua_client.py"),
            Peer::NodeOpcua(n) => (n, "opcua_client.mjs"),
        };
        let mut c = Command::new(program);
        c.arg(format!(
            "{}/tests/interop/{script}",
            env!("CARGO_MANIFEST_DIR")
        ));
        c
    }
}

/// Runs `peer` against `url` (`only`: its steps named so); its findings by step.
fn client(
    peer: &Peer,
    url: &str,
    gateway_id: &str,
    certs: &std::path::Path,
    only: &[&str],
) -> Vec<Json> {
    let out = peer
        .command()
        .args([url, gateway_id, &certs.display().to_string()])
        .args(only)
        .output()
        .expect("run the OPC UA client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the OPC UA client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // node-opcua logs on stdout too: the findings are the lines that are JSON objects.
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

fn step<'a>(found: &'a [Json], name: &str) -> Vec<&'a Json> {
    found.iter().filter(|j| j["step"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncua_browses_reads_subscribes_and_writes() {
    let Some(peer) = asyncua() else { return };
    a_scada_client_browses_reads_subscribes_and_writes(peer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_opcua_browses_reads_subscribes_and_writes() {
    let Some(peer) = node_opcua() else { return };
    a_scada_client_browses_reads_subscribes_and_writes(peer).await;
}

#[allow(
    clippy::too_many_lines,
    reason = "one client's session, read top to bottom"
)]
async fn a_scada_client_browses_reads_subscribes_and_writes(peer: Peer) {
    let (sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let bits = 21.5f32.to_bits();
    sim.with_memory(1, |m| {
        m.holding[0] = (bits >> 16) as u16;
        m.holding[1] = bits as u16;
    });
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A calculated point is a point of its device here too: browsed, read-only, a Double.
    let body = format!(
        "{}{}[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
         security = [\"basic256sha256\", \"none\"]\nanonymous = true\ntrust_client_certs = true\n{}\
         [[calculated]]\ndevice = \"boiler\"\npoint = \"temperature_f\"\n\
         expr = \"temperature * 1.8 + 32\"\nunit = \"°F\"\n",
        users_and_push(""),
        tcp_bus(&sim_addr.to_string()),
        BOILER_AND_PUMP.replace("type = \"f32\" }", "type = \"f32\", unit = \"°C\" }"),
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("online", || online(&gw, "boiler")).await;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let certs = dir.path().join("client-pki");
    let found = tokio::task::spawn_blocking({
        let (url, certs) = (url.clone(), certs.clone());
        move || client(&peer, &url, "test-gw", &certs, &[])
    })
    .await
    .unwrap();
    let all = serde_json::to_string_pretty(&found).unwrap();

    assert_eq!(step(&found, "anonymous")[0]["ok"], true, "{all}");
    let browse = step(&found, "browse")[0];
    assert_eq!(
        browse["devices"],
        serde_json::json!(["boiler", "pump"]),
        "{all}"
    );
    assert_eq!(
        browse["points"],
        serde_json::json!([
            "Online",
            "burner",
            "setpoint",
            "temperature",
            "temperature_f"
        ]),
        "{all}"
    );
    let read = |node: &str| {
        *step(&found, "read")
            .iter()
            .find(|r| r["node"] == node)
            .unwrap_or_else(|| panic!("no read of {node}: {all}"))
    };
    let t = read("temperature");
    assert_eq!(
        (&t["type"], &t["status"], &t["unit"]),
        (&"Float".into(), &"Good".into(), &"°C".into()),
        "{all}"
    );
    assert!((t["value"].as_f64().unwrap() - 21.5).abs() < 1e-6, "{all}");
    // A scaled point is served as Double (SPEC), a coil as Boolean.
    assert_eq!(read("setpoint")["type"], "Double", "{all}");
    assert_eq!(read("burner")["type"], "Boolean", "{all}");
    assert_eq!(read("Online")["value"], true, "{all}");
    let f = read("temperature_f");
    assert_eq!(
        (&f["type"], &f["status"], &f["unit"]),
        (&"Double".into(), &"Good".into(), &"°F".into()),
        "{all}"
    );
    assert!((f["value"].as_f64().unwrap() - 70.7).abs() < 1e-6, "{all}");
    assert!(
        step(&found, "subscribe")[0]["changes"].as_u64().unwrap() >= 1,
        "{all}"
    );
    // Writes: an admin's go the strict, audited path; a viewer's and an anonymous one's are
    // refused; a wrong type, NaN and a value the point cannot hold write nothing.
    assert_eq!(
        step(&found, "write")[0]["status"],
        "BadUserAccessDenied",
        "{all}"
    );
    let wrote = |user: &str, what: &str| {
        step(&found, "write_as")
            .iter()
            .find(|w| w["user"] == user && w["what"] == what)
            .map_or_else(
                || panic!("no write {what} as {user}: {all}"),
                |w| w["status"].as_str().unwrap().to_string(),
            )
    };
    assert_eq!(wrote("admin", "ok"), "Good", "{all}");
    assert_eq!(wrote("admin", "wrong_type"), "BadTypeMismatch", "{all}");
    assert_eq!(wrote("admin", "nan"), "BadOutOfRange", "{all}");
    assert_eq!(wrote("admin", "out_of_range"), "BadOutOfRange", "{all}");
    for what in ["ok", "wrong_type", "nan", "out_of_range"] {
        assert_eq!(wrote("viewer", what), "BadUserAccessDenied", "{all}");
    }
    // Only the admin's right write reached the device: 12.5 at scale 0.1.
    assert_eq!(sim.with_memory(1, |m| m.holding[2]), Some(125));
    let by_opcua = audit_from(&gw, "opcua").await;
    assert!(
        by_opcua.iter().any(|a| a["result"] == "ok"
            && a["user"].as_str().unwrap().starts_with("opcua:admin@")),
        "{by_opcua:?}"
    );
    // The dashboard's admin over Basic256Sha256 SignAndEncrypt; a wrong password refused.
    let secure = step(&found, "secure")[0];
    assert_eq!(
        (&secure["ok"], &secure["status"]),
        (&true.into(), &"Good".into()),
        "{all}"
    );
    assert_eq!(step(&found, "wrong_password")[0]["ok"], false, "{all}");
    // The server made its own certificate in the data directory's pki/.
    assert!(dir.path().join("pki/own/cert.der").exists());
    // SPEC's metrics: requests on the gateway's nodes by service and result, sessions, items.
    let metrics = http_get(gw.http_addr, "/metrics").await;
    for line in [
        "edge_opcua_requests_total{service=\"write\",result=\"Good\"} 1",
        "edge_opcua_requests_total{service=\"write\",result=\"BadTypeMismatch\"} 1",
        "# TYPE edge_opcua_sessions gauge",
        "# TYPE edge_opcua_monitored_items gauge",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    gw.shutdown().await;
}

/// SPEC: an unknown client certificate is rejected into `rejected/` until an admin moves it to
/// `trusted/`; then the same client gets its session, without a restart, and again after a
/// reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_asyncua_certificate_waits_in_rejected_until_trusted() {
    let Some(peer) = asyncua() else { return };
    an_unknown_client_certificate_waits_in_rejected_until_trusted(peer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_opcua_certificate_waits_in_rejected_until_trusted() {
    let Some(peer) = node_opcua() else { return };
    an_unknown_client_certificate_waits_in_rejected_until_trusted(peer).await;
}

async fn an_unknown_client_certificate_waits_in_rejected_until_trusted(peer: Peer) {
    let (_sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = format!(
        "{}{}[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{BOILER_AND_PUMP}",
        users_and_push(""),
        tcp_bus(&sim_addr.to_string()),
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("online", || online(&gw, "boiler")).await;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let certs = dir.path().join("client-pki");
    let attempt = || {
        let (peer, url, certs) = (peer.clone(), url.clone(), certs.clone());
        tokio::task::spawn_blocking(move || client(&peer, &url, "test-gw", &certs, &["secure"]))
    };
    let first = attempt().await.unwrap();
    assert_eq!(first[0]["ok"], false, "{first:?}");
    let rejected: Vec<_> = std::fs::read_dir(dir.path().join("pki/rejected"))
        .expect("a rejected/ directory")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let trusted = dir.path().join("pki/trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    let name = rejected[0].file_name().unwrap();
    std::fs::rename(&rejected[0], trusted.join(name)).unwrap();
    let second = attempt().await.unwrap();
    assert_eq!(
        (&second[0]["ok"], &second[0]["status"]),
        (&true.into(), &"Good".into()),
        "{second:?}"
    );
    // A reload serves on the same port again, the certificate still trusted.
    let same = (*gw.config).clone();
    let (gw, _) = gw.reload(same).await.unwrap();
    wait_for("online", || online(&gw, "boiler")).await;
    let third = attempt().await.unwrap();
    assert_eq!(third[0]["ok"], true, "{third:?}");
    gw.shutdown().await;
}

/// SPEC: alarms raised and cleared are OPC UA events on the Server object and on the device's
/// object, with Severity (high: 700), Message and SourceName.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_reach_a_client_as_events() {
    use std::io::BufRead;
    let Some(python) = python() else { return };
    let (sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = format!(
        "{}{}[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nsecurity = [\"none\"]\n\
         anonymous = true\n{BOILER_AND_PUMP}\n[[rules]]\nid = \"hot\"\ndevice = \"boiler\"\n\
         point = \"setpoint\"\nkind = \"above\"\nthreshold = 90.0\nclear = 85.0\npriority = \"high\"\n",
        users_and_push(""),
        tcp_bus(&sim_addr.to_string()),
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("online", || online(&gw, "boiler")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/opcua_client.py");
    let mut child = Command::new(&python)
        .args([
            script,
            &format!("opc.tcp://127.0.0.1:{port}/"),
            "test-gw",
            "-",
            "events",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the asyncua client");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Json>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or(Json::Null));
        }
    });
    let ready = rx.recv().await.expect("the client's first line");
    assert_eq!(ready["step"], "ready", "{ready}");
    // Raised (setpoint 95.0 > 90), then cleared (80.0 < 85).
    sim.with_memory(1, |m| m.holding[2] = 950);
    wait_for("raised", || {
        gw.shared.live.read().unwrap().devices[0].points[1].value
            == Some(edge_gateway::model::Value::Float(95.0))
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sim.with_memory(1, |m| m.holding[2] = 800);
    let mut events = Vec::new();
    while let Some(line) = rx.recv().await {
        events.push(line);
    }
    let _ = child.wait();
    let on = |where_: &str| -> Vec<&Json> { events.iter().filter(|e| e["on"] == where_).collect() };
    for where_ in ["server", "boiler"] {
        let seen = on(where_);
        assert!(seen.len() >= 2, "{events:?}");
        assert!(
            seen.iter()
                .all(|e| e["severity"] == 700 && e["source"] == "boiler"),
            "{events:?}"
        );
    }
    gw.shutdown().await;
}
