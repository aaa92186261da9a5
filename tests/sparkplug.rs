//! Sparkplug B against code we did not write: a host decoding with pysparkplug
//! (`tests/interop/sparkplug_host.py`) on a real Mosquitto, a pymodbus device behind the
//! gateway. Births, aliases, datatypes and values; Rebirth; DCMD writes; `seq` over 1,000
//! messages; NDEATH's `bdSeq` after SIGKILL; a broker outage and a primary host that goes away
//! ending with every sample delivered, historical ones flagged. Needs `EDGE_PYMODBUS_PYTHON`
//! (with pysparkplug) and `EDGE_TEST_MQTT_ADDR`; `./scripts/test` sets both.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use edge_gateway::config::Priority;
use edge_gateway::model::{now_ms, Value};
use edge_gateway::Gateway;
use serde_json::Value as Json;
use tokio::sync::mpsc;

fn setup() -> Option<(String, String)> {
    let python = std::env::var("EDGE_PYMODBUS_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    let broker = std::env::var("EDGE_TEST_MQTT_ADDR")
        .ok()
        .filter(|a| !a.is_empty());
    if let (Some(p), Some(b)) = (python, broker) {
        Some((p, b))
    } else {
        skipped("EDGE_PYMODBUS_PYTHON (with pysparkplug) or EDGE_TEST_MQTT_ADDR is not set (./scripts/test sets both)");
        None
    }
}

/// The host: every message it decoded, in arrival order, and its commands.
struct Host {
    _child: Child,
    stdin: std::process::ChildStdin,
    rx: mpsc::UnboundedReceiver<Json>,
    /// Every message of the node so far, in arrival order.
    log: Vec<Json>,
    /// How far `next` has looked.
    at: usize,
}

impl Host {
    async fn start(
        python: &str,
        broker: &str,
        group: &str,
        node: &str,
        primary: Option<&str>,
    ) -> Host {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/sparkplug_host.py"
        );
        let (host, port) = broker.rsplit_once(':').unwrap();
        let mut child = Command::new(python)
            .args([script, host, port, group, node])
            .args(primary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Sparkplug host");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(serde_json::from_str(&line).unwrap_or(Json::Null));
            }
        });
        let mut h = Host {
            _child: Child(child),
            stdin,
            rx,
            log: Vec::new(),
            at: 0,
        };
        let ready = h.recv(Duration::from_secs(15)).await;
        assert_eq!(ready, Some(Json::from("ready")), "the host did not start");
        h
    }

    async fn recv(&mut self, within: Duration) -> Option<Json> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends a command and waits until the host has carried it out.
    async fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        loop {
            let m = self
                .recv(Duration::from_secs(15))
                .await
                .expect("the host answers");
            if m.get("done").is_some() {
                return;
            }
            self.log.push(m);
        }
    }

    /// The next message after the last one `next` returned that `pred` accepts.
    async fn next(&mut self, what: &str, pred: impl Fn(&Json) -> bool) -> Json {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            while self.at < self.log.len() {
                self.at += 1;
                let m = &self.log[self.at - 1];
                assert!(
                    m.get("error").is_none(),
                    "pysparkplug refused a message: {m}"
                );
                if pred(m) {
                    return m.clone();
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some(m) => self.log.push(m),
                None => panic!(
                    "no {what} within 60 s; saw {:#?}",
                    &self.log[self.log.len().saturating_sub(5)..]
                ),
            }
        }
    }
}

fn verb(m: &Json, v: &str, device: Option<&str>) -> bool {
    m["verb"] == v && m["device"].as_str() == device
}

/// The device's DBIRTH once it has answered: every metric with a value.
fn with_values(m: &Json) -> bool {
    verb(m, "DBIRTH", Some("py"))
        && m["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["null"] == false)
}

fn metrics(m: &Json) -> BTreeMap<String, Json> {
    m["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["name"].as_str().unwrap_or("?").to_string(), x.clone()))
        .collect()
}

fn config(id: &str, broker: &str, device: &str, mqtt: &str) -> String {
    format!(
        r#"[mqtt]
url = "mqtt://{broker}"
format = "sparkplug_b"
group_id = "it-{id}"
{mqtt}
[events]
max_per_device_per_s = 100000
{bus}
[[devices]]
id = "py"
bus = "b"
unit = 1
poll_interval_ms = 200
points = [
  {{ id = "f32", table = "holding", address = 0, type = "f32" }},
  {{ id = "i32", table = "holding", address = 2, type = "i32" }},
  {{ id = "u64", table = "holding", address = 4, type = "u64" }},
  {{ id = "i16", table = "holding", address = 8, type = "i16" }},
  {{ id = "u16", table = "holding", address = 9, type = "u16", unit = "rpm" }},
  {{ id = "string", table = "holding", address = 10, type = "string", length = 5 }},
  {{ id = "f64", table = "holding", address = 15, type = "f64" }},
  {{ id = "scaled", table = "holding", address = 9, type = "u16", scale = 0.01, offset = -100.0, unit = "°C", min = 0.0, max = 600.0 }},
  {{ id = "coil0", table = "coil", address = 0, type = "bool" }},
  {{ id = "w_u16", table = "holding", address = 104, type = "u16", writable = true }},
]
[[calculated]]
device = "py"
point = "u16_half"
expr = "u16 / 2"
"#,
        bus = tcp_bus(device)
    )
}

/// Every message after the first NBIRTH: `seq` one more than the last (mod 256), an NBIRTH 0.
fn assert_seq_unbroken(log: &[Json]) -> usize {
    let mut last: Option<u64> = None;
    let mut wraps = 0;
    for m in log
        .iter()
        .filter(|m| m["verb"] != "NDEATH" && m.get("verb").is_some())
    {
        let seq = m["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {m}"));
        match (m["verb"].as_str(), last) {
            (Some("NBIRTH"), _) => assert_eq!(seq, 0, "NBIRTH's seq"),
            (_, Some(l)) => assert_eq!(seq, (l + 1) % 256, "seq after {l}: {m}"),
            (_, None) => panic!("a message before the first NBIRTH: {m}"),
        }
        if last == Some(255) && seq == 0 {
            wraps += 1;
        }
        last = Some(seq);
    }
    wraps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_host_decodes_births_data_and_commands_against_the_device() {
    let Some((python, broker)) = setup() else {
        return;
    };
    let (_device, port) = start_pymodbus(&python, "tcp", "0", &[]);
    let at = format!("127.0.0.1:{port}");
    // The device behind a relay, to take it away and bring it back.
    let line = Relay::start(at.parse().unwrap()).await;
    let id = unique_id("spb");
    let mut host = Host::start(&python, &broker, &format!("it-{id}"), &id, None).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config_id(
        &id,
        dir.path(),
        &config(&id, &broker, &line.addr.to_string(), "allow_writes = true"),
    ))
    .await
    .unwrap();

    let nbirth = host.next("NBIRTH", |m| verb(m, "NBIRTH", None)).await;
    assert_eq!(nbirth["seq"], 0);
    let node = metrics(&nbirth);
    assert_eq!(node["bdSeq"]["datatype"], "INT64");
    assert_eq!(node["Node Control/Rebirth"]["datatype"], "BOOLEAN");
    assert_eq!(node["Node Control/Rebirth"]["value"], false);
    let bd_seq = node["bdSeq"]["value"].clone();

    // The DBIRTH once the device has answered: every point, typed, with the device's values.
    let dbirth = host.next("a DBIRTH with values", with_values).await;
    // And no DBIRTH before it: a device is born once polled, never with every metric null
    // (#31, item 8).
    let births = host
        .log
        .iter()
        .filter(|m| verb(m, "DBIRTH", Some("py")))
        .count();
    assert_eq!(births, 1, "a DBIRTH before the device answered");
    let d = metrics(&dbirth);
    // A calculated point is a metric of its device like any other.
    let expect: [(&str, &str, Json); 11] = [
        ("i32", "INT32", (-123_456).into()),
        ("u64", "UINT64", 0x0102_0304_0506_0708_u64.into()),
        ("i16", "INT16", (-2).into()),
        ("u16", "UINT16", 65000.into()),
        ("string", "STRING", "HELLO-PLC!".into()),
        ("f64", "DOUBLE", (-1.5).into()),
        ("scaled", "DOUBLE", 550.0.into()),
        ("coil0", "BOOLEAN", true.into()),
        ("w_u16", "UINT16", 0.into()),
        ("u16_half", "DOUBLE", 32500.0.into()),
        ("f32", "FLOAT", Json::Null),
    ];
    for (name, datatype, value) in &expect {
        let m = &d[*name];
        assert_eq!(m["datatype"], *datatype, "{name}: {m}");
        if !value.is_null() {
            assert_eq!(m["value"], *value, "{name}: {m}");
        }
        assert_eq!(m["props"]["Quality"], 192, "{name}: {m}");
        assert!(m["alias"].as_u64().is_some(), "{name} has an alias");
    }
    assert!((d["f32"]["value"].as_f64().unwrap() - 123.456).abs() < 1e-4);
    assert_eq!(d["scaled"]["props"]["engUnit"], "°C");
    assert_eq!(d["scaled"]["props"]["engHigh"], 600.0);
    assert_eq!(d["u16"]["props"]["engUnit"], "rpm");
    let mut aliases: Vec<u64> = d.values().map(|m| m["alias"].as_u64().unwrap()).collect();
    aliases.extend(node.values().filter_map(|m| m["alias"].as_u64()));
    let n = aliases.len();
    aliases.sort_unstable();
    aliases.dedup();
    assert_eq!(aliases.len(), n, "aliases are unique across the node");

    // A DCMD write goes through the audited path and comes back as DDATA, by alias, which
    // the host resolves to its name from the DBIRTH.
    host.send("dcmd py w_u16 UINT16 4321").await;
    let data = host
        .next("DDATA with the written value", |m| {
            verb(m, "DDATA", Some("py"))
                && m["metrics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["name"] == "w_u16" && x["value"] == 4321)
        })
        .await;
    assert!(data["metrics"][0]["ts"].as_u64().is_some());
    wait_for("the device holds 4321", || {
        point(&gw, "py", "w_u16").value == Some(Value::Int(4321))
    })
    .await;
    let db = rusqlite::Connection::open(dir.path().join(edge_gateway::store::DB_FILE)).unwrap();
    let (user, source): (String, String) = db
        .query_row(
            "SELECT user, source FROM write_audit ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((user.as_str(), source.as_str()), ("sparkplug", "sparkplug"));

    // A DCMD stamped a minute ago is refused (audited as such), never run late; the next
    // one, fresh, runs.
    host.send("dcmd py w_u16 UINT16 999 60000").await;
    host.send("dcmd py w_u16 UINT16 4322").await;
    wait_for("the device holds 4322", || {
        point(&gw, "py", "w_u16").value == Some(Value::Int(4322))
    })
    .await;
    gw.store.flush().await;
    let old: String = db
        .query_row(
            "SELECT result FROM write_audit WHERE CAST(new_value AS INTEGER) = 999",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(old.contains("command_max_age_s"), "{old}");

    // A read-only metric and an unknown one: ignored and counted, the device untouched.
    host.send("dcmd py f32 FLOAT 1.0").await;
    host.send("dcmd py nope UINT16 1").await;
    wait_for_async("two commands counted as ignored", || async {
        http_get(gw.http_addr, "/metrics")
            .await
            .contains("edge_sink_commands_ignored_total{sink=\"mqtt\"} 2")
    })
    .await;
    assert!((point(&gw, "py", "f32").value.unwrap().as_f64().unwrap() - 123.456).abs() < 1e-4);

    // Rebirth: NBIRTH (seq 0, the same bdSeq: the same MQTT session) and the DBIRTH again.
    host.send("rebirth").await;
    let again = host
        .next("NBIRTH after Rebirth", |m| verb(m, "NBIRTH", None))
        .await;
    assert_eq!(metrics(&again)["bdSeq"]["value"], bd_seq);
    let dbirth = host
        .next("DBIRTH after Rebirth", |m| verb(m, "DBIRTH", Some("py")))
        .await;
    assert_eq!(metrics(&dbirth)["w_u16"]["value"], 4322);
    // Three more at once, within a second of those births: answered together, once.
    for _ in 0..3 {
        host.send("rebirth").await;
    }
    host.next("NBIRTH for the repeated Rebirths", |m| {
        verb(m, "NBIRTH", None)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Some(m) = host.recv(Duration::from_millis(100)).await {
        host.log.push(m);
    }
    let births = host.log[host.at..]
        .iter()
        .filter(|m| verb(m, "NBIRTH", None))
        .count();
    assert_eq!(births, 0, "one birth set for three Rebirths");

    // The device goes away: DDEATH; back: a fresh DBIRTH with its values.
    line.cut();
    host.next("DDEATH", |m| verb(m, "DDEATH", Some("py"))).await;
    line.restore();
    let dbirth = host
        .next("DBIRTH once the device is back", |m| {
            verb(m, "DBIRTH", Some("py"))
        })
        .await;
    assert_eq!(metrics(&dbirth)["w_u16"]["value"], 4322);

    // 1,100 events, each an NDATA of the node's Event metric: seq runs on and wraps. Fed 100 at
    // a time: the Python host decodes slower than the gateway publishes, and Mosquitto drops a
    // subscriber's messages beyond its queue (1,000 by default) — a loss in the test's host,
    // which the seq check below would blame on the gateway.
    let mut last = Json::Null;
    for chunk in 0..11 {
        for n in chunk * 100..(chunk + 1) * 100 {
            gw.inject_draft(info_draft(
                0,
                Priority::Normal,
                &format!("spb event {n}"),
                now_ms(),
            ))
            .await;
        }
        let end = format!("spb event {}\"", chunk * 100 + 99);
        last = host
            .next("the chunk's last event", |m| {
                verb(m, "NDATA", None)
                    && m["metrics"][0]["value"]
                        .as_str()
                        .is_some_and(|v| v.contains(&end))
            })
            .await;
    }
    let event: Json = serde_json::from_str(last["metrics"][0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(event["deviceId"], "py");
    assert_eq!(last["metrics"][0]["name"], "Event");
    assert!(host.log.len() > 1000, "{} messages", host.log.len());
    assert!(
        assert_seq_unbroken(&host.log) >= 4,
        "seq wrapped at least 4 times"
    );

    // A clean stop says NDEATH with this session's bdSeq.
    gw.shutdown().await;
    let death = host
        .next("NDEATH on a clean stop", |m| m["verb"] == "NDEATH")
        .await;
    assert_eq!(death["bdSeq"], bd_seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndeath_after_sigkill_carries_the_births_bdseq_and_a_restart_takes_the_next() {
    let Some((python, broker)) = setup() else {
        return;
    };
    let id = unique_id("spb-kill");
    let mut host = Host::start(&python, &broker, &format!("it-{id}"), &id, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{}",
            dir.path().join("data").display().to_string(),
            config(&id, &broker, "127.0.0.1:1", "")
        ),
    )
    .unwrap();
    let (mut gw, _) = spawn_gateway(gateway_command(&cfg), None);
    let birth = host.next("NBIRTH", |m| verb(m, "NBIRTH", None)).await;
    let bd_seq = metrics(&birth)["bdSeq"]["value"].as_u64().unwrap();
    unsafe_kill(&mut gw);
    let death = host
        .next("NDEATH (the will)", |m| m["verb"] == "NDEATH")
        .await;
    assert_eq!(death["bdSeq"], bd_seq, "{death}");
    assert_eq!(death["datatype"], "INT64");
    let (_gw, _) = spawn_gateway(gateway_command(&cfg), None);
    let birth = host
        .next("NBIRTH after a restart", |m| verb(m, "NBIRTH", None))
        .await;
    assert_eq!(metrics(&birth)["bdSeq"]["value"], (bd_seq + 1) % 256);
}

/// Waits for DDATA of `w_u16` carrying each of `values`; returns (value, historical) in order.
async fn written_values(host: &mut Host, values: &[i64]) -> Vec<(i64, bool)> {
    let mut got = Vec::new();
    while got.len() < values.len() {
        let m = host
            .next("DDATA of w_u16", |m| verb(m, "DDATA", Some("py")))
            .await;
        for x in m["metrics"].as_array().unwrap() {
            if let (Some("w_u16"), Some(v)) = (x["name"].as_str(), x["value"].as_i64()) {
                if values.contains(&v) && !got.iter().any(|(g, _)| *g == v) {
                    got.push((v, x["historical"] == true));
                }
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_broker_outage_and_an_absent_primary_host_lose_no_sample() {
    let Some((python, broker)) = setup() else {
        return;
    };
    let outage: u64 = std::env::var("EDGE_SPARKPLUG_OUTAGE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let (_device, port) = start_pymodbus(&python, "tcp", "0", &[]);
    let at = format!("127.0.0.1:{port}");
    let id = unique_id("spb-host");
    let primary = format!("scada-{id}");
    let mut host = Host::start(&python, &broker, &format!("it-{id}"), &id, Some(&primary)).await;
    host.send("online").await;
    let relay = Relay::start(broker.parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let mqtt = format!("primary_host_id = \"{primary}\"");
    let gw = Gateway::start(config_id(
        &id,
        dir.path(),
        &config(&id, &relay.addr.to_string(), &at, &mqtt),
    ))
    .await
    .unwrap();
    let birth = host.next("NBIRTH", |m| verb(m, "NBIRTH", None)).await;
    let bd_seq = metrics(&birth)["bdSeq"]["value"].as_u64().unwrap();
    host.next("a DBIRTH with values", with_values).await;

    // The broker is out of reach: the will says the node is dead; the device is written to
    // (and polled) all along.
    relay.cut();
    let death = host
        .next("NDEATH (the will)", |m| m["verb"] == "NDEATH")
        .await;
    assert_eq!(death["bdSeq"], bd_seq);
    let start = tokio::time::Instant::now();
    let mut written = Vec::new();
    let mut k = 1;
    while start.elapsed() < Duration::from_secs(outage) {
        gw.write("py", "w_u16", Value::Int(k)).await.unwrap();
        written.push(k);
        k += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    relay.restore();
    let birth = host
        .next("NBIRTH after the outage", |m| verb(m, "NBIRTH", None))
        .await;
    // A new session (each CONNECT attempt took the next number, its will's).
    let bd_seq2 = metrics(&birth)["bdSeq"]["value"].as_u64().unwrap();
    assert_ne!(bd_seq2, bd_seq);
    let got = written_values(&mut host, &written).await;
    // Every value arrived, in order; each sampled before the new birth is flagged historical
    // (the last one may be the birth's own current value, then sent again as history).
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), written);
    assert!(
        got[..got.len() - 1].iter().all(|g| g.1),
        "historical: {got:?}"
    );

    // The primary host goes away: the node dies and holds its data; back, it is born again
    // and the held samples follow as history.
    host.send("offline").await;
    let death = host
        .next("NDEATH when the host went offline", |m| {
            m["verb"] == "NDEATH"
        })
        .await;
    let held: Vec<i64> = (1000..1005).collect();
    for v in &held {
        gw.write("py", "w_u16", Value::Int(*v)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = host.log.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    host.send("online").await;
    assert!(
        host.log[before..]
            .iter()
            .take_while(|m| m["verb"] != "NBIRTH")
            .all(|m| m["verb"] != "DDATA"),
        "no data while the host was away"
    );
    let birth = host
        .next("NBIRTH once the host is back", |m| verb(m, "NBIRTH", None))
        .await;
    assert_eq!(
        metrics(&birth)["bdSeq"]["value"].as_u64(),
        death["bdSeq"].as_u64().map(|b| (b + 1) % 256)
    );
    let got = written_values(&mut host, &held).await;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), held);
    assert!(
        got[..held.len() - 1].iter().all(|g| g.1),
        "historical: {got:?}"
    );
    caught_up(&gw, "mqtt").await;
    gw.shutdown().await;
    host.send("clear").await;
}
