//! The engineer's side of the fleet, for the CLI: `fleet keygen` (a key pair), `fleet ls` (every
//! gateway's retained `state`, as a table or JSON) and `fleet rpc` (one signed read-only call),
//! each over the broker the gateways use.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, Transport};
use serde_json::{json, Value as Json};

use super::signed::{self, Signer};
use crate::model::{now_ms, parse_rfc3339, rfc3339};

/// A state older than this says its gateway is not there (it renews every 60 s).
const FRESH_MS: i64 = 150_000;

/// `fleet keygen --out FILE`: the private key (PKCS#8, base64, mode 0600) and the line for
/// `[fleet] public_keys`.
pub fn keygen(out: &Path) -> Result<String, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let (pkcs8, entry) = signed::keygen()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    writeln!(
        f,
        "{}",
        base64::engine::general_purpose::STANDARD.encode(pkcs8)
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(format!("public_keys = [\"{entry}\"]"))
}

/// A client of the broker at `url` (`mqtt[s]://[user:pass@]host[:port]`).
fn connect(url: &str) -> Result<(AsyncClient, EventLoop), String> {
    let t = crate::sinks::mqtt::parse_url(url)?;
    let mut o = MqttOptions::new(
        format!("edge-fleet-{:08x}", rand::random::<u32>()),
        t.host.clone(),
        t.port,
    );
    o.set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    if let Some((u, p)) = &t.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    if t.tls {
        o.set_transport(Transport::tls_with_config(crate::sinks::mqtt::tls_config()?));
    }
    Ok(AsyncClient::new(o, 64))
}

/// Publishes that arrive until `until` says enough or `quiet` passes without one (after the
/// first `wait` for the broker).
async fn collect(
    el: &mut EventLoop,
    wait: Duration,
    quiet: Duration,
    mut take: impl FnMut(&str, &[u8]) -> bool,
) -> Result<(), String> {
    let mut deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(format!("the broker: {e}")),
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                if take(&p.topic, &p.payload) {
                    return Ok(());
                }
                deadline = tokio::time::Instant::now() + quiet;
            }
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => {
                deadline = tokio::time::Instant::now() + quiet;
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// `fleet ls`: every gateway's retained `state` under `prefix`, by id.
pub async fn ls(url: &str, prefix: &str) -> Result<BTreeMap<String, Json>, String> {
    let (client, mut el) = connect(url)?;
    client
        .subscribe(format!("{prefix}/+/state"), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let mut states = BTreeMap::new();
    // Retained messages come right after the subscription's ack: half a second of quiet ends it.
    collect(
        &mut el,
        Duration::from_secs(10),
        Duration::from_millis(500),
        |topic, payload| {
            let id = topic
                .split('/')
                .rev()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            if let Ok(state) = serde_json::from_slice::<Json>(payload) {
                states.insert(id, state);
            }
            false
        },
    )
    .await?;
    let _ = client.disconnect().await;
    let now = now_ms();
    for s in states.values_mut() {
        let age = s["ts"].as_str().and_then(parse_rfc3339).map(|t| now - t);
        s["ageS"] = json!(age.map(|a| a / 1000));
        s["online"] = json!(age.is_some_and(|a| a < FRESH_MS));
    }
    Ok(states)
}

/// `fleet ls`'s table: one line a gateway, read at a glance.
pub fn table(states: &BTreeMap<String, Json>) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<24} {:<7} {:<10} {:>9} {:>16} {:>8} {:>7}\n",
        "GATEWAY", "ONLINE", "VERSION", "DEVICES", "ALARMS act/un/em", "BACKLOG", "AGE"
    );
    for (id, s) in states {
        let n = |v: &Json| v.as_i64().unwrap_or(0);
        let backlog = n(&s["sinks"]["mysql"]["backlog"]) + n(&s["sinks"]["mqtt"]["backlog"]);
        let a = &s["alarms"];
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:<10} {:>9} {:>16} {:>8} {:>6}s",
            id,
            if s["online"] == true { "yes" } else { "NO" },
            s["version"].as_str().unwrap_or("?"),
            format!(
                "{}/{}",
                n(&s["devices"]["online"]),
                n(&s["devices"]["total"])
            ),
            format!(
                "{}/{}/{}",
                n(&a["active"]),
                n(&a["unacked"]),
                n(&a["emergency"])
            ),
            backlog,
            n(&s["ageS"]),
        );
    }
    out
}

/// `fleet rpc`: one signed read-only call to `gateway`, its reply (as over WebSocket).
pub async fn rpc(
    url: &str,
    prefix: &str,
    key: &Path,
    gateway: &str,
    service: &str,
    params: &str,
) -> Result<Json, String> {
    let signer = Signer::load(key)?;
    let (client, mut el) = connect(url)?;
    client
        .subscribe(format!("{prefix}/{gateway}/rpc/response"), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let id = format!("rpc-{:016x}", rand::random::<u64>());
    let expires = rfc3339(now_ms() + 60_000);
    let sig = signer.sign(&signed::rpc_message(
        &id, gateway, &expires, service, params,
    ));
    let request = json!({
        "id": id, "target": gateway, "expires": expires, "service": service,
        "params": params, "keyId": signer.key_id, "sig": sig,
    });
    // Sent once the subscription is acknowledged, so the reply cannot come before it.
    let mut reply = None;
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reply.is_none() {
        let ev = tokio::time::timeout_at(deadline, el.poll())
            .await
            .map_err(|_| format!("no reply from `{gateway}` within 15 s"))?
            .map_err(|e| format!("the broker: {e}"))?;
        match ev {
            Event::Incoming(Incoming::SubAck(_)) if !sent => {
                client
                    .publish(
                        format!("{prefix}/{gateway}/rpc/request"),
                        QoS::AtLeastOnce,
                        false,
                        request.to_string(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                sent = true;
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let r: Json = serde_json::from_slice(&p.payload).unwrap_or(Json::Null);
                if r["id"] == json!(id) {
                    reply = Some(r);
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(reply.unwrap_or(Json::Null))
}

/// `fleet ls` as printed: the table, or `--json` one object by gateway id.
pub async fn print_ls(url: &str, prefix: &str, as_json: bool) -> Result<(), String> {
    let states = ls(url, prefix).await?;
    if as_json {
        println!("{}", json!(states));
    } else {
        print!("{}", table(&states));
    }
    Ok(())
}

/// `fleet rpc` as printed: the reply; an error unless its code is 0.
pub async fn print_rpc(
    url: &str,
    prefix: &str,
    key: &Path,
    gateway: &str,
    service: &str,
    params: &str,
) -> Result<(), String> {
    let reply = rpc(url, prefix, key, gateway, service, params).await?;
    println!("{reply:#}");
    if reply["code"] == 0 {
        Ok(())
    } else {
        Err(format!("`{gateway}` answered code {}", reply["code"]))
    }
}
