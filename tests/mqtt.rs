//! The MQTT sink against a real Mosquitto (`EDGE_TEST_MQTT_ADDR`, set by `./scripts/test`):
//! topics and payloads, birth and last will (also on SIGKILL), an outage through a relay loses
//! nothing, and `mqtts://`. Writes: `tests/mqtt_writes.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::mqtt::*;
use common::tls::make_test_ca;
use common::*;
use edge_gateway::config::Priority;
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::model::now_ms;
use serde_json::{json, Value as Json};

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

/// With `require_client_certificate`, its TLS listener takes only clients whose certificate the
/// test CA signed (Mosquitto's `require_certificate true`).
fn tls_broker(dir: &std::path::Path, require_client_certificate: bool) -> Option<TlsBroker> {
    let made = make_test_ca(dir);
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
            "user root\nallow_anonymous true\nlistener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n{clients}",
            d = dir.display(),
            clients = if require_client_certificate {
                format!("cafile {}/ca.pem\nrequire_certificate true\n", dir.display())
            } else {
                String::new()
            }
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
    let Some(b) = tls_broker(dir.path(), false) else {
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
    assert!(
        make_test_ca(other.path()),
        "openssl made the first CA, and not this one"
    );
    w.kept.clear();
    let (_gw, http) = spawn_with_ca(&other.path().join("ca.pem"));
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

/// A broker that verifies its clients: the gateway's `client_cert` / `client_key` let it in;
/// the same gateway without them is refused and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_requiring_client_certificates_takes_the_gateways_and_refuses_none() {
    if broker().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(b) = tls_broker(dir.path(), true) else {
        return;
    };
    wait_for("the test broker", || {
        std::net::TcpStream::connect(("127.0.0.1", b.tls)).is_ok()
    })
    .await;
    let id = unique_id("mtls");
    let mut w = Watcher::start(&format!("127.0.0.1:{}", b.plain), &id).await;
    let gateway = |name: &str, identity: &str| {
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nurl = \"mqtts://localhost:{}\"\n{identity}\n{}{BOILER_AND_PUMP}",
                dir.path().join(name).display().to_string(),
                b.tls,
                tcp_bus("127.0.0.1:1")
            ),
        )
        .unwrap();
        let mut cmd = gateway_command(&cfg);
        cmd.env("SSL_CERT_FILE", &b.ca);
        spawn_gateway(cmd, None)
    };
    let d = dir.path().display();
    let with = gateway(
        "with",
        &format!("client_cert = \"{d}/client.pem\"\nclient_key = \"{d}/client.key\""),
    );
    w.next("/status", |s| s["online"] == true).await;
    drop(with);
    w.kept.clear();
    let (_without, http) = gateway("without", "");
    wait_for_async("the broker's refusal said", || async {
        healthz_json(http)
            .await
            .is_some_and(|h| h["sinks"]["mqtt"]["error"].is_string())
    })
    .await;
    while let Ok(m) = w.rx.try_recv() {
        assert!(
            m.1["online"] != true,
            "connected without a client certificate: {m:?}"
        );
    }
}
