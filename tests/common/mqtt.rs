//! The MQTT tests' side of a real Mosquitto: the broker's address (or a skip said out loud), a
//! watching client with markers, and a gateway publishing to it.

use std::time::Duration;

use edge_gateway::Gateway;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use super::*;

pub fn broker() -> Option<String> {
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
pub struct Watcher {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<(String, Json, bool)>,
    /// Received and not yet taken by `next`, oldest first.
    pub kept: Vec<(String, Json, bool)>,
}

impl Watcher {
    pub async fn start(broker: &str, id: &str) -> Watcher {
        Self::start_on(broker, &format!("edge/{id}/#")).await
    }

    /// Everything under the topic filter `filter`.
    pub async fn start_on(broker: &str, filter: &str) -> Watcher {
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
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
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
    pub async fn marker(&mut self, id: &str) {
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
    pub async fn next(
        &mut self,
        suffix: &str,
        pred: impl Fn(&Json) -> bool,
    ) -> (String, Json, bool) {
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

pub fn body(broker: &str, addr: &str, extra: &str) -> String {
    format!(
        "[mqtt]\nurl = \"mqtt://{broker}\"\nqos = 1\n{extra}\n{}{BOILER_AND_PUMP}",
        tcp_bus(addr)
    )
}

/// A gateway with its own data dir and id, polling the simulator at `sim` and publishing to
/// `via` (the broker, or a relay in front of it); `mqtt` adds keys to `[mqtt]`, `more` sections.
pub async fn start_gateway(
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

/// Leaves the shared broker as it was found.
pub async fn clear_retained(w: &mut Watcher, id: &str) {
    clear_retained_under(w, "edge", id).await;
    w.marker(id).await;
}

/// The retained messages of gateway `id` under topic prefix `prefix`, cleared.
pub async fn clear_retained_under(w: &Watcher, prefix: &str, id: &str) {
    for t in [
        "status",
        "state",
        "devices/boiler/status",
        "devices/pump/status",
    ] {
        let _ = w
            .client
            .publish(
                format!("{prefix}/{id}/{t}"),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await;
    }
}

/// `edge-gateway ARGS…` run to its end: whether it exited 0, its stdout and its stderr.
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
