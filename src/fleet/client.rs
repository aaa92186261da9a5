//! The engineer's side of the fleet, for the CLI: `fleet keygen` (a key pair), `fleet ls` (every
//! gateway's retained `state`, as a table or JSON), `fleet apply` (a signed config, with its
//! results) and `fleet rpc` (one signed read-only call),
//! each over the broker the gateways use.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS};
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
    let mut o = crate::broker::options(
        url,
        format!("edge-fleet-{:08x}", rand::random::<u32>()),
        Duration::from_secs(15),
    )?;
    o.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
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

/// `fleet ls`: every gateway's retained `state` under `prefix`, by id, each with `online`
/// (its state is fresh, and its retained `status` is not the last will's `{"online": false}`:
/// a gateway killed a moment ago is not shown online) and `ageS`.
pub async fn ls(url: &str, prefix: &str) -> Result<BTreeMap<String, Json>, String> {
    let (client, mut el) = connect(url)?;
    for leaf in ["state", "status"] {
        client
            .subscribe(format!("{prefix}/+/{leaf}"), QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut states = BTreeMap::new();
    let mut gone = std::collections::HashSet::new();
    // Retained messages come right after the subscription's ack: half a second of quiet ends it.
    collect(
        &mut el,
        Duration::from_secs(10),
        Duration::from_millis(500),
        |topic, payload| {
            let mut parts = topic.rsplit('/');
            let (leaf, id) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            if let Ok(msg) = serde_json::from_slice::<Json>(payload) {
                if leaf == "state" {
                    states.insert(id.to_string(), msg);
                } else if msg["online"] == false {
                    gone.insert(id.to_string());
                }
            }
            false
        },
    )
    .await?;
    let _ = client.disconnect().await;
    let now = now_ms();
    for (id, s) in &mut states {
        let age = s["ts"].as_str().and_then(parse_rfc3339).map(|t| now - t);
        s["ageS"] = json!(age.map(|a| a / 1000));
        s["online"] = json!(age.is_some_and(|a| a < FRESH_MS) && !gone.contains(id));
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

/// Where signed messages go: the broker, the topic prefix, the key that signs.
pub struct Send<'a> {
    pub url: &'a str,
    pub prefix: &'a str,
    pub key: &'a Path,
}

/// How long `fleet apply` waits for the gateways' results (a reload takes seconds).
const APPLY_WAIT: Duration = Duration::from_secs(60);

/// The `config/apply` messages of one `fleet apply` (one per target, or one to `_all`), by
/// topic, expiring in 120 s.
fn apply_messages(
    signer: &Signer,
    prefix: &str,
    id: &str,
    targets: Option<&[String]>,
    confirm_s: u64,
    text: &str,
) -> Vec<(String, String)> {
    let expires = rfc3339(now_ms() + 120_000);
    let message = |target: &str| {
        let sig = signer.sign(&signed::config_message(
            id, target, &expires, confirm_s, text,
        ));
        json!({
            "id": id, "target": target, "expires": expires, "confirmS": confirm_s,
            "text": text, "keyId": signer.key_id, "sig": sig,
        })
        .to_string()
    };
    match targets {
        Some(t) => t
            .iter()
            .map(|g| (format!("{prefix}/{g}/config/apply"), message(g)))
            .collect(),
        None => vec![(format!("{prefix}/_all/config/apply"), message("_all"))],
    }
}

/// `fleet apply`: `text` signed and sent to each of `targets` (`None`: once to `_all`, for
/// every gateway `fleet ls` finds online), each one's `config/result` by gateway id (a
/// gateway that did not answer in time is absent); with `confirm_s`, each gateway that applied
/// it confirmed at once.
pub async fn apply(
    to: &Send<'_>,
    targets: Option<Vec<String>>,
    confirm_s: u64,
    text: &str,
) -> Result<(Vec<String>, BTreeMap<String, Json>), String> {
    let signer = Signer::load(to.key)?;
    let prefix = to.prefix;
    let gateways: Vec<String> = match &targets {
        Some(t) => t.clone(),
        None => ls(to.url, prefix)
            .await?
            .into_iter()
            .filter(|(_, s)| s["online"] == true)
            .map(|(id, _)| id)
            .collect(),
    };
    let (client, mut el) = connect(to.url)?;
    client
        .subscribe(format!("{prefix}/+/config/result"), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let id = format!("cfg-{:016x}", rand::random::<u64>());
    let sends = apply_messages(&signer, prefix, &id, targets.as_deref(), confirm_s, text);
    let confirm = json!({ "id": id, "sig": signer.sign(&signed::confirm_message(&id)) });
    let mut results = BTreeMap::new();
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    while results.len() < gateways.len() {
        let Ok(ev) = tokio::time::timeout_at(deadline, el.poll()).await else {
            break;
        };
        match ev.map_err(|e| format!("the broker: {e}"))? {
            // Sent once the subscription holds, so no result can come before it.
            Event::Incoming(Incoming::SubAck(_)) if !sent => {
                for (topic, payload) in &sends {
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                sent = true;
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let r: Json = serde_json::from_slice(&p.payload).unwrap_or(Json::Null);
                let gw = p.topic.split('/').rev().nth(2).unwrap_or_default();
                if r["id"] != json!(id) || !gateways.iter().any(|g| g == gw) {
                    continue;
                }
                if confirm_s > 0 && r["result"] == "applied" {
                    client
                        .publish(
                            format!("{prefix}/{gw}/config/confirm"),
                            QoS::AtLeastOnce,
                            false,
                            confirm.to_string(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                results.insert(gw.to_string(), r);
            }
            _ => {}
        }
    }
    // The confirms go out before the connection closes.
    let _ = client.disconnect().await;
    let _ = collect(
        &mut el,
        Duration::from_secs(2),
        Duration::from_secs(2),
        |_, _| false,
    )
    .await;
    Ok((gateways, results))
}

/// One line per gateway: applied (with the version), refused (the reason, then each problem
/// by line and key path), or no answer.
pub fn apply_lines(gateways: &[String], results: &BTreeMap<String, Json>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for g in gateways {
        let Some(r) = results.get(g) else {
            let _ = writeln!(out, "{g:<24} no answer within {} s", APPLY_WAIT.as_secs());
            continue;
        };
        let what = r["result"].as_str().unwrap_or("?");
        let detail = match what {
            "applied" => format!("version {}", r["version"]),
            _ => r["reason"].as_str().unwrap_or_default().to_string(),
        };
        let _ = writeln!(out, "{g:<24} {what:<8} {detail}");
        for p in r["problems"].as_array().into_iter().flatten() {
            let line = p["line"]
                .as_u64()
                .map_or_else(String::new, |l| format!("line {l}: "));
            let _ = writeln!(
                out,
                "{:<24}   {line}{} {}",
                "",
                p["path"].as_str().unwrap_or_default(),
                p["message"].as_str().unwrap_or_default()
            );
        }
    }
    out
}

/// `fleet apply` as printed: one line per gateway; an error unless every one applied.
pub async fn print_apply(
    to: &Send<'_>,
    targets: Option<Vec<String>>,
    confirm_s: u64,
    config: &Path,
) -> Result<(), String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let (gateways, results) = apply(to, targets, confirm_s, &text).await?;
    if gateways.is_empty() {
        return Err(format!("no gateway online under `{}`", to.prefix));
    }
    print!("{}", apply_lines(&gateways, &results));
    let applied = gateways
        .iter()
        .filter(|g| results.get(*g).is_some_and(|r| r["result"] == "applied"))
        .count();
    if applied == gateways.len() {
        Ok(())
    } else {
        Err(format!(
            "{applied} of {} gateway(s) applied it",
            gateways.len()
        ))
    }
}
