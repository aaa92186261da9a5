//! The MQTT sink against a real Mosquitto (`EDGE_TEST_MQTT_ADDR`, set by `./scripts/test`):
//! topics and payloads, birth and last will (also on SIGKILL), an outage through a relay loses
//! nothing, and writes only when `allow_writes`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use edge_gateway::config::Priority;
use edge_gateway::modbus::simulator::{Profile, BOILER};
use edge_gateway::model::now_ms;
use edge_gateway::Gateway;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

fn broker() -> Option<String> {
    match std::env::var("EDGE_TEST_MQTT_ADDR") {
        Ok(a) if !a.is_empty() => Some(a),
        _ => {
            skipped(
                "EDGE_TEST_MQTT_ADDR is not set (./scripts/test sets it to the local Mosquitto)",
            );
            None
        }
    }
}

/// A test's own MQTT client: everything under `edge/{id}/#` arrives on the channel.
struct Watcher {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Json, bool)>,
    /// Received and not yet taken by `next`, oldest first.
    kept: Vec<(String, Json, bool)>,
}

impl Watcher {
    async fn start(broker: &str, id: &str) -> Watcher {
        let (host, port) = broker.rsplit_once(':').unwrap();
        let mut o = MqttOptions::new(
            format!("watch-{}", rand::random::<u32>()),
            host,
            port.parse().unwrap(),
        );
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        client
            .subscribe(format!("edge/{id}/#"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (sub_tx, mut sub_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let body = serde_json::from_slice(&p.payload).unwrap_or(Json::Null);
                        let _ = tx.send((p.topic, body, p.retain));
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = sub_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        sub_rx.recv().await;
        Watcher {
            client,
            rx,
            kept: Vec::new(),
        }
    }

    /// Publishes a marker and waits for it to come back: the broker has then handled everything
    /// this client published before it (one client's messages are handled in order).
    async fn marker(&mut self, id: &str) {
        let n: u32 = rand::random();
        self.client
            .publish(
                format!("edge/{id}/marker"),
                QoS::AtLeastOnce,
                false,
                n.to_string(),
            )
            .await
            .unwrap();
        self.next("/marker", |b| *b == json!(n)).await;
    }

    /// The oldest message not taken yet on a topic ending with `suffix` that `pred` accepts.
    async fn next(&mut self, suffix: &str, pred: impl Fn(&Json) -> bool) -> (String, Json, bool) {
        let fits = |m: &(String, Json, bool)| m.0.ends_with(suffix) && pred(&m.1);
        if let Some(i) = self.kept.iter().position(fits) {
            return self.kept.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no message on …{suffix} within 20 s"))
                .unwrap();
            if fits(&m) {
                return m;
            }
            self.kept.push(m);
        }
    }
}

fn body(broker: &str, addr: &str, extra: &str) -> String {
    format!(
        "[mqtt]\nurl = \"mqtt://{broker}\"\nqos = 1\n{extra}\n{}{BOILER_AND_PUMP}",
        tcp_bus(addr)
    )
}

/// A gateway with its own data dir and id, polling the simulator at `sim` and publishing to
/// `via` (the broker, or a relay in front of it); `mqtt` adds keys to `[mqtt]`, `more` sections.
async fn start_gateway(
    id: &str,
    via: &str,
    sim: std::net::SocketAddr,
    mqtt: &str,
    more: &str,
) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config_id(
        id,
        dir.path(),
        &(body(via, &sim.to_string(), mqtt) + more),
    ))
    .await
    .unwrap();
    (gw, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn birth_status_telemetry_and_events_arrive_on_the_spec_topics() {
    let Some(broker) = broker() else { return };
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let id = unique_id("topics");
    let mut w = Watcher::start(&broker, &id).await;
    let (gw, _dir) = start_gateway(&id, &broker, addr, "", "").await;
    let (_, birth, retained) = w.next("/status", |b| b["online"] == true).await;
    assert_eq!(birth, json!({"online": true}));
    assert!(!retained, "live delivery of a retained publish");
    let (topic, status, _) = w.next("/devices/boiler/status", |_| true).await;
    assert_eq!(topic, format!("edge/{id}/devices/boiler/status"));
    assert_eq!(
        (status["online"].as_bool(), status["type"].as_str()),
        (Some(true), Some(""))
    );
    let (_, t, _) = w
        .next("/devices/boiler/telemetry", |b| {
            b["points"]["temperature"]["q"] == "good"
        })
        .await;
    assert!(t["ts"].as_str().unwrap().ends_with('Z'), "{t}");
    assert!(t["points"]["temperature"]["v"].is_number(), "{t}");
    let (_, e, _) = w
        .next("/devices/boiler/events", |b| b["type"] == "device_online")
        .await;
    assert_eq!(
        e["id"],
        format!(
            "{id}-{}",
            e["id"].as_str().unwrap().rsplit('-').next().unwrap()
        )
    );
    assert_eq!(
        (e["deviceId"].as_str(), e["deviceSeq"].as_i64()),
        (Some("boiler"), Some(1))
    );
    caught_up(&gw, "mqtt").await;
    let h = healthz(gw.http_addr).await;
    let sinks: Json = serde_json::from_str(h.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(sinks["sinks"]["mqtt"]["backlog"].is_i64(), "{h}");
    assert!(sinks["sinks"]["mqtt"].get("error").is_none(), "{h}");
    // A clean stop says offline itself (a DISCONNECT does not fire the will).
    gw.shutdown().await;
    w.next("/status", |b| b["online"] == false).await;
    // Retained: a newcomer learns the gateway and device state at once.
    let mut late = Watcher::start(&broker, &id).await;
    let (_, s, retained) = late.next("/status", |_| true).await;
    assert_eq!((s, retained), (json!({"online": false}), true));
    let (_, _, retained) = late.next("/devices/pump/status", |_| true).await;
    assert!(retained);
    clear_retained(&mut w, &id).await;
}

/// Leaves the shared broker as it was found.
async fn clear_retained(w: &mut Watcher, id: &str) {
    for t in ["status", "devices/boiler/status", "devices/pump/status"] {
        let _ = w
            .client
            .publish(format!("edge/{id}/{t}"), QoS::AtLeastOnce, true, Vec::new())
            .await;
    }
    w.marker(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_while_the_broker_is_unreachable_arrive_after() {
    let Some(broker) = broker() else { return };
    let relay = Relay::start(broker.parse().unwrap()).await;
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let id = unique_id("outage");
    let mut w = Watcher::start(&broker, &id).await;
    // No storm control: every one of the events below is published.
    let no_storms = "[events]\nmax_per_device_per_s = 100000\n";
    let (gw, _dir) = start_gateway(&id, &relay.addr.to_string(), addr, "", no_storms).await;
    w.next("/status", |b| b["online"] == true).await;
    caught_up(&gw, "mqtt").await;
    relay.cut();
    // The broker sees the connection die and publishes the will.
    w.next("/status", |b| b["online"] == false).await;
    for n in 0..200 {
        gw.inject_draft(info_draft(
            n % 2,
            Priority::Normal,
            &format!("test event {n}"),
            now_ms(),
        ))
        .await;
    }
    wait_for_async("backlog in healthz", || async {
        let h = healthz(gw.http_addr).await;
        h.contains(r#""mqtt":{"backlog":"#) && h.contains("error")
    })
    .await;
    relay.restore();
    w.next("/status", |b| b["online"] == true).await;
    caught_up(&gw, "mqtt").await;
    let mut seen: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut made = BTreeSet::new();
    while made.len() < 200 {
        let (_, e, _) = w
            .next("/events", |b| {
                b["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("test event"))
            })
            .await;
        made.insert(e["message"].as_str().unwrap().to_string());
        seen.entry(e["deviceId"].as_str().unwrap().to_string())
            .or_default()
            .insert(e["deviceSeq"].as_i64().unwrap());
    }
    // Every event made in the outage arrived; deviceSeq shows no gap per device.
    for (device, seqs) in &seen {
        let (lo, hi) = (*seqs.first().unwrap(), *seqs.last().unwrap());
        assert_eq!(
            seqs.len() as i64,
            hi - lo + 1,
            "gap in {device}'s deviceSeq"
        );
    }
    gw.shutdown().await;
    clear_retained(&mut w, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_will_is_published_when_the_gateway_is_killed() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let id = unique_id("will");
    let mut w = Watcher::start(&broker, &id).await;
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nurl = \"mqtt://{broker}\"\n{}{BOILER_AND_PUMP}",
            dir.path().join("data").display().to_string(),
            tcp_bus("127.0.0.1:1")
        ),
    )
    .unwrap();
    let (mut gw, _) = spawn_gateway(gateway_command(&cfg), None);
    w.next("/status", |b| b["online"] == true).await;
    unsafe_kill(&mut gw);
    let (_, will, _) = w.next("/status", |_| true).await;
    assert_eq!(will, json!({"online": false}));
    clear_retained(&mut w, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_the_audited_path_only_when_allowed() {
    let Some(broker) = broker() else { return };
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let id = unique_id("writes");
    let mut w = Watcher::start(&broker, &id).await;
    let (gw, _dir) = start_gateway(&id, &broker, addr, "allow_writes = true", "").await;
    w.next("/status", |b| b["online"] == true).await;
    wait_for("online", || online(&gw, "boiler")).await;
    let client = w.client.clone();
    let write = |payload: Json| {
        let c = client.clone();
        let topic = format!("edge/{id}/devices/boiler/write");
        async move {
            c.publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                .await
                .unwrap();
        }
    };
    write(json!({"requestId": "w1", "pointId": "setpoint", "value": 61.5})).await;
    let (_, r, _) = w
        .next("/devices/boiler/write/result", |b| b["requestId"] == "w1")
        .await;
    assert_eq!(
        (r["code"].as_i64(), r["value"].as_f64()),
        (Some(0), Some(61.5)),
        "{r}"
    );
    assert_eq!(sim.with_memory(BOILER, |m| m.holding[2]), Some(615));
    write(json!({"requestId": "w2", "pointId": "temperature", "value": 1})).await;
    let (_, r, _) = w.next("/write/result", |b| b["requestId"] == "w2").await;
    assert_eq!(r["code"], 405, "{r}");
    write(json!({"requestId": "w3", "pointId": "nope", "value": 1})).await;
    let (_, r, _) = w.next("/write/result", |b| b["requestId"] == "w3").await;
    assert_eq!(r["code"], 404, "{r}");
    // The same strict parse as the WebSocket: "NaN" is refused, not written as 0.
    write(json!({"requestId": "w5", "pointId": "setpoint", "value": "NaN"})).await;
    let (_, r, _) = w.next("/write/result", |b| b["requestId"] == "w5").await;
    assert_eq!(r["code"], 400, "{r}");
    assert_eq!(sim.with_memory(BOILER, |m| m.holding[2]), Some(615));
    write(json!("not an object")).await;
    let (_, r, _) = w.next("/write/result", |b| b["code"] == 400).await;
    assert_eq!(r["requestId"], Json::Null);
    // Audited like a WebSocket write, with the MQTT source.
    gw.store.flush().await;
    let db = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    let (user, result): (String, String) = db
        .query_row(
            "SELECT user, result FROM write_audit WHERE point_id = 'setpoint'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((user.as_str(), result.as_str()), ("mqtt", "ok"));
    gw.shutdown().await;

    // Without allow_writes nothing listens on the write topic.
    let (gw, _dir) = start_gateway(&id, &broker, addr, "", "").await;
    w.next("/status", |b| b["online"] == true).await;
    write(json!({"requestId": "w4", "pointId": "setpoint", "value": 70})).await;
    // Not "nothing after a sleep": once the marker sent after w4 is back, the broker has handled
    // w4. Then the device's temperature moves twice, and each move comes back as telemetry: two
    // polls later the gateway would long have answered w4 (a write goes ahead of polls).
    w.marker(&id).await;
    for t in [41.5f32, 42.5] {
        sim.with_memory(BOILER, |m| {
            let bits = t.to_bits();
            m.holding[0] = (bits >> 16) as u16;
            m.holding[1] = bits as u16;
        });
        w.next("/devices/boiler/telemetry", |b| {
            b["points"]["temperature"]["v"] == json!(t)
        })
        .await;
    }
    while let Ok(m) = w.rx.try_recv() {
        w.kept.push(m);
    }
    assert!(
        !w.kept
            .iter()
            .any(|m| m.0.ends_with("/write/result") && m.1["requestId"] == "w4"),
        "{:?}",
        w.kept
    );
    assert_eq!(sim.with_memory(BOILER, |m| m.holding[2]), Some(615));
    gw.shutdown().await;
    clear_retained(&mut w, &id).await;
}

/// A private Mosquitto with a plain listener (for the test's watcher) and a TLS one whose
/// certificate is signed by a CA made for the test; `None` when mosquitto or openssl is
/// missing.
struct TlsBroker {
    child: std::process::Child,
    plain: u16,
    tls: u16,
    ca: std::path::PathBuf,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn tls_broker(dir: &std::path::Path) -> Option<TlsBroker> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let made = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=edge test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]) && std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .is_ok()
        && run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
    if !made {
        skipped("openssl could not make a test CA");
        return None;
    }
    let (plain, tls) = (free_port(), free_port());
    // `user root`: started as root, mosquitto would otherwise drop to its own user, which cannot
    // read the test's private temp dir.
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!(
            "user root\nallow_anonymous true\nlistener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
            d = dir.display()
        ),
    )
    .ok()?;
    let child = std::process::Command::new("mosquitto")
        .args(["-c", dir.join("mosquitto.conf").to_str()?])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(child) = child else {
        skipped("mosquitto is not installed");
        return None;
    };
    Some(TlsBroker {
        child,
        plain,
        tls,
        ca: dir.join("ca.pem"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_urls_connect_over_tls_and_verify_the_broker() {
    if broker().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(b) = tls_broker(dir.path()) else {
        return;
    };
    wait_for("the test broker", || {
        std::net::TcpStream::connect(("127.0.0.1", b.tls)).is_ok()
    })
    .await;
    let id = unique_id("tls");
    let mut w = Watcher::start(&format!("127.0.0.1:{}", b.plain), &id).await;
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nurl = \"mqtts://localhost:{}\"\n{}{BOILER_AND_PUMP}",
            dir.path().join("data").display().to_string(),
            b.tls,
            tcp_bus("127.0.0.1:1")
        ),
    )
    .unwrap();
    let spawn_with_ca = |ca: &std::path::Path| {
        let mut cmd = gateway_command(&cfg);
        cmd.env("SSL_CERT_FILE", ca);
        spawn_gateway(cmd, None)
    };
    // Trusting the test CA: connected, birth published.
    let gw = spawn_with_ca(&b.ca);
    w.next("/status", |s| s["online"] == true).await;
    drop(gw);
    // Trusting only another CA: the broker's certificate is refused, nothing is published.
    let other = tempfile::tempdir().unwrap();
    std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=other",
            "-keyout",
            "o.key",
            "-out",
            "o.pem",
        ])
        .current_dir(other.path())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    w.kept.clear();
    let (_gw, http) = spawn_with_ca(&other.path().join("o.pem"));
    // Not "nothing after a sleep": the handshake's refusal is the sink's error in /healthz.
    wait_for_async("the certificate refused", || async {
        healthz_json(http).await.is_some_and(|h| {
            h["sinks"]["mqtt"]["error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("certificate"))
        })
    })
    .await;
    while let Ok(m) = w.rx.try_recv() {
        assert!(
            m.1["online"] != true,
            "connected without a trusted certificate: {m:?}"
        );
    }
}

/// Hostile test #30, items 3-5: 3,000 QoS 1 writes to one point landed out of order (a task
/// per message raced for the bus); a write published while the gateway was stopped ran at its
/// next start; a 300 KB message put the sink in a reconnect loop. Now: carried out in the
/// order received (or refused with 429 past the queue's bound, never reordered), an old one
/// refused with 408, a huge one refused with 413 while the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario read top to bottom")]
async fn mqtt_writes_run_in_order_and_none_runs_late_or_too_large() {
    let Some(broker) = broker() else { return };
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let id = unique_id("order");
    let mut w = Watcher::start(&broker, &id).await;
    let (gw, dir) = start_gateway(&id, &broker, addr, "allow_writes = true", "").await;
    w.next("/status", |b| b["online"] == true).await;
    wait_for("online", || online(&gw, "boiler")).await;
    let topic = format!("edge/{id}/devices/boiler/write");
    let publish = |c: AsyncClient, payload: Vec<u8>| {
        let topic = topic.clone();
        async move {
            c.publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    };
    // 300 writes as fast as the client sends them, each a higher setpoint.
    let n = 300;
    for i in 1..=n {
        let body = json!({"requestId": format!("o{i}"), "pointId": "setpoint", "value": f64::from(i) / 10.0});
        publish(w.client.clone(), body.to_string().into_bytes()).await;
    }
    let mut done = Vec::new();
    for i in 1..=n {
        let (_, r, _) = w
            .next("/write/result", |b| b["requestId"] == format!("o{i}"))
            .await;
        let code = r["code"].as_i64().unwrap();
        assert!(code == 0 || code == 429, "o{i}: {r}");
        if code == 0 {
            done.push(i);
        }
    }
    assert!(!done.is_empty());
    // In the order sent: the audit's rows, in the order carried out, rise; the device holds the
    // last one carried out.
    gw.store.flush().await;
    let db = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    let mut q = db
        .prepare("SELECT CAST(new_value AS REAL) FROM write_audit WHERE result = 'ok' ORDER BY id")
        .unwrap();
    let written: Vec<f64> = q
        .query_map([], |r| r.get::<_, f64>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(written.len(), done.len());
    assert!(written.windows(2).all(|p| p[0] < p[1]), "{written:?}");
    let last = *done.last().unwrap();
    assert_eq!(sim.with_memory(BOILER, |m| m.holding[2]), Some(last as u16));

    // A write stamped a minute ago is refused, not run.
    let old = json!({"requestId": "old", "pointId": "setpoint", "value": 77.7,
        "ts": edge_gateway::model::rfc3339(now_ms() - 60_000)});
    publish(w.client.clone(), old.to_string().into_bytes()).await;
    let (_, r, _) = w.next("/write/result", |b| b["requestId"] == "old").await;
    assert_eq!(r["code"], 408, "{r}");
    assert_eq!(sim.with_memory(BOILER, |m| m.holding[2]), Some(last as u16));

    // 300 KB on the write topic: refused unread, and the session goes on (no will, no new
    // birth), so the next write runs.
    let huge = format!(
        r#"{{"requestId":"huge","pointId":"setpoint","value":1,"pad":"{}"}}"#,
        "x".repeat(300_000)
    );
    publish(w.client.clone(), huge.into_bytes()).await;
    let (_, r, _) = w.next("/write/result", |b| b["code"] == 413).await;
    assert!(r["msg"].as_str().unwrap().contains("refused"), "{r}");
    publish(
        w.client.clone(),
        json!({"requestId": "after", "pointId": "setpoint", "value": 12.3})
            .to_string()
            .into_bytes(),
    )
    .await;
    let (_, r, _) = w.next("/write/result", |b| b["requestId"] == "after").await;
    assert_eq!(r["code"], 0, "{r}");
    assert!(
        !w.kept
            .iter()
            .any(|m| m.0.ends_with(&format!("{id}/status"))),
        "the session restarted: {:?}",
        w.kept
            .iter()
            .filter(|m| m.0.ends_with("/status"))
            .collect::<Vec<_>>()
    );
    gw.shutdown().await;

    // Published while the gateway is stopped: not run at its next start.
    w.next("/status", |b| b["online"] == false).await;
    publish(
        w.client.clone(),
        json!({"requestId": "while-away", "pointId": "setpoint", "value": 55.5})
            .to_string()
            .into_bytes(),
    )
    .await;
    w.marker(&id).await;
    let gw = Gateway::start(config_id(
        &id,
        dir.path(),
        &body(&broker, &addr.to_string(), "allow_writes = true"),
    ))
    .await
    .unwrap();
    w.next("/status", |b| b["online"] == true).await;
    publish(
        w.client.clone(),
        json!({"requestId": "fresh", "pointId": "setpoint", "value": 4.5})
            .to_string()
            .into_bytes(),
    )
    .await;
    let (_, r, _) = w.next("/write/result", |b| b["requestId"] == "fresh").await;
    assert_eq!(r["code"], 0, "{r}");
    while let Ok(m) = w.rx.try_recv() {
        w.kept.push(m);
    }
    assert!(
        !w.kept
            .iter()
            .any(|m| m.0.ends_with("/write/result") && m.1["requestId"] == "while-away"),
        "a write sent while the gateway was away ran"
    );
    assert_eq!(sim.with_memory(BOILER, |m| m.holding[2]), Some(45));
    gw.shutdown().await;
    clear_retained(&mut w, &id).await;
}
