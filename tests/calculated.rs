//! Calculated points and `expr` rules against a pymodbus device: values as the inputs change,
//! quality following the inputs', rules on a calculated point, an expression rule's on- and
//! off-delays, the point served read-only by the Modbus server and kept in history, and
//! `check-config` naming every problem.

mod common;

use std::time::Duration;

use common::*;
use edge_gateway::model::{now_ms, Quality, Value};
use edge_gateway::Gateway;
use serde_json::{json, Value as Json};

fn body(device: &str, server: u16) -> String {
    format!(
        r#"
{bus}
[[devices]]
id = "boiler-1"
bus = "b"
unit = 1
poll_interval_ms = 100
points = [
  {{ id = "heat", table = "holding", address = 100, type = "u16", writable = true }},
  {{ id = "gas", table = "holding", address = 101, type = "u16", writable = true }},
  {{ id = "flag", table = "holding", address = 102, type = "u16", writable = true }},
]

[[calculated]]
device = "boiler-1"
point = "efficiency"
expr = "heat / max(gas * 10.5, 0.001) * 100"
unit = "%"

[[calculated]]
device = "boiler-1"
point = "hot"
expr = "efficiency > 500"

[[rules]]
id = "efficiency-high"
device = "boiler-1"
point = "efficiency"
kind = "above"
threshold = 900.0
priority = "normal"

[[rules]]
id = "dry"
device = "boiler-1"
kind = "expr"
expr = "heat > 100 && flag == 1"
on_delay_ms = 1500
clear_for_ms = 1500
priority = "high"
message = "burning with the flag up"

[modbus_server]
enabled = true
listen = "127.0.0.1:{server}"
allowed_clients = ["127.0.0.1/32"]
allow_writes = true

[[modbus_server.units]]
unit = 2
device = "boiler-1"
layout = "float32"
"#,
        bus = tcp_bus(device)
    )
}

async fn events(gw: &Gateway, kind: &str) -> Vec<Json> {
    gw.settle().await;
    let conn = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    let f = edge_gateway::store::EventFilter {
        device_id: Some("boiler-1".into()),
        kind: Some(kind.into()),
        limit: 100,
        ..Default::default()
    };
    edge_gateway::store::query_events(&conn, &gw.config, &f).unwrap()
}

/// The newest event of `kind` from rule `rule` (its alarm key), waited for.
async fn event_of(gw: &Gateway, kind: &str, rule_message: &str) -> Json {
    for _ in 0..200 {
        let found = events(gw, kind).await.into_iter().find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(rule_message))
        });
        if let Some(e) = found {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {kind} event `{rule_message}`");
}

fn event_ms(e: &Json) -> i64 {
    let ts = e["ts"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(ts)
        .unwrap()
        .timestamp_millis()
}

/// The expression rule: raised no sooner than its on-delay after the flag went up, cleared
/// no sooner than its off-delay after it went down; it names no point.
async fn expr_rule_waits_its_delays(gw: &Gateway) {
    let up = now_ms();
    gw.write("boiler-1", "flag", Value::UInt(1)).await.unwrap();
    let raised = event_of(gw, "threshold_exceeded", "burning with the flag up").await;
    assert!(
        event_ms(&raised) >= up + 1500,
        "{raised} raised before its delay"
    );
    assert_eq!(
        (&raised["pointId"], &raised["priority"], &raised["state"]),
        (&Json::Null, &json!("high"), &json!("active")),
        "{raised}"
    );
    let down = now_ms();
    gw.write("boiler-1", "flag", Value::UInt(0)).await.unwrap();
    let cleared = event_of(gw, "threshold_cleared", "burning with the flag up").await;
    assert!(
        event_ms(&cleared) >= down + 1500,
        "{cleared} cleared before its delay"
    );
}

/// History has the calculated point's good and bad rows like any point's.
async fn history_has_every_state(gw: &Gateway) {
    gw.settle().await;
    let conn = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    let dev = &gw.config.devices[0];
    let rows =
        edge_gateway::store::history(&conn, dev, &dev.points[3], 0, now_ms() + 1, 1000).unwrap();
    let seen: Vec<(Option<f64>, Quality)> = rows
        .iter()
        .map(|(_, v, q)| (v.as_ref().and_then(Value::as_f64), *q))
        .collect();
    for want in [
        (Some(1000.0), Quality::Good),
        (Some(1000.0), Quality::Bad),
        (Some(0.0), Quality::Good),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calculated_points_follow_their_inputs_everywhere_and_expr_rules_wait_their_delays() {
    let Some(py) = python() else { return };
    let port = free_port().to_string();
    let (server, _) = start_pymodbus(&py, "tcp", &port, &[]);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let gw = Gateway::start(config(
        dir.path(),
        &body(&format!("127.0.0.1:{port}"), listen),
    ))
    .await
    .unwrap();
    let value = |p: &str| point(&gw, "boiler-1", p).value;

    // 210 / (2 × 10.5) × 100 = 1000: the value, the chained bool, the rule on the result.
    gw.write("boiler-1", "gas", Value::UInt(2)).await.unwrap();
    wait_for("gas 2", || value("gas") == Some(Value::Int(2))).await;
    gw.write("boiler-1", "heat", Value::UInt(210))
        .await
        .unwrap();
    wait_for("efficiency 1000", || {
        value("efficiency") == Some(Value::Float(1000.0))
            && quality(&gw, "boiler-1", "efficiency") == Quality::Good
    })
    .await;
    wait_for("hot", || value("hot") == Some(Value::Bool(true))).await;
    let high = event_of(&gw, "threshold_exceeded", "threshold exceeded").await;
    assert_eq!(high["pointId"], "efficiency", "{high}");
    assert_eq!(high["value"], 1000.0, "{high}");
    // Its time is its newest input's.
    let eff = point(&gw, "boiler-1", "efficiency");
    let heat = point(&gw, "boiler-1", "heat");
    let gas = point(&gw, "boiler-1", "gas");
    assert_eq!(eff.ts, heat.ts.max(gas.ts));

    // Served read-only by the Modbus server: points in order from 0, the fourth at 6.
    let ops = json!([
        {"op": "read", "table": "holding", "unit": 2, "address": 6, "count": 2},
        {"op": "write_registers", "unit": 2, "address": 6, "values": [0, 0]},
    ]);
    let got = pymodbus_client(&py, listen, &ops);
    let regs: Vec<u16> = serde_json::from_value(got[0]["ok"].clone()).unwrap();
    let bits = (u32::from(regs[0]) << 16) | u32::from(regs[1]);
    assert_eq!(f32::from_bits(bits), 1000.0, "{got:?}");
    assert_eq!(got[1], json!({"exception": 1}), "{got:?}");

    expr_rule_waits_its_delays(&gw).await;

    // An input gone bad makes the result bad; back good, good again (pymodbus restarts
    // with zeros: 0 / 0.001 × 100 = 0).
    let mut server = server;
    unsafe_kill(&mut server);
    wait_for("efficiency bad", || {
        quality(&gw, "boiler-1", "efficiency") == Quality::Bad
            && quality(&gw, "boiler-1", "hot") == Quality::Bad
    })
    .await;
    assert_eq!(
        value("efficiency"),
        Some(Value::Float(1000.0)),
        "the last value is kept"
    );
    let _server = start_pymodbus(&py, "tcp", &port, &[]);
    wait_for("efficiency good again", || {
        quality(&gw, "boiler-1", "efficiency") == Quality::Good
            && value("efficiency") == Some(Value::Float(0.0))
    })
    .await;

    history_has_every_state(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn check_config_names_every_problem_of_calculated_points_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[gateway]\nid = \"t\"\ndata_dir = \"{}\"\n{}\n[[devices]]\nid = \"boiler-1\"\nbus = \"b\"\nunit = 1\n\
         points = [{{ id = \"heat\", table = \"holding\", address = 0, type = \"u16\" }}]\n\
         [[calculated]]\ndevice = \"boiler-1\"\npoint = \"a\"\nexpr = \"heat + nope\"\n\
         [[calculated]]\ndevice = \"boiler-1\"\npoint = \"b\"\nexpr = \"(heat > 1) * 2\"\n\
         [[calculated]]\ndevice = \"boiler-1\"\npoint = \"c\"\nexpr = \"heat / (2 - 2)\"\n\
         [[calculated]]\ndevice = \"boiler-1\"\npoint = \"d\"\nexpr = \"e + 1\"\n\
         [[calculated]]\ndevice = \"boiler-1\"\npoint = \"e\"\nexpr = \"d + 1\"\n",
        dir.path().display(),
        tcp_bus("127.0.0.1:1")
    );
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, &text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
            .args(["check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (needle, path, message) in [
        (
            "heat + nope",
            "calculated[0].expr",
            "unknown name `nope` (at column 8)",
        ),
        (
            "(heat > 1) * 2",
            "calculated[1].expr",
            "`*` needs a number, this is true/false (at column 1)",
        ),
        (
            "heat / (2 - 2)",
            "calculated[2].expr",
            "division by zero: the right side of `/` is always 0 (at column 8)",
        ),
        (
            "e + 1",
            "calculated[3].expr",
            "calculated points read each other in a cycle: boiler-1.d → boiler-1.e → boiler-1.d",
        ),
        (
            "d + 1",
            "calculated[4].expr",
            "calculated points read each other in a cycle: boiler-1.e → boiler-1.d → boiler-1.e",
        ),
    ] {
        let want = format!("line {}: {path}: {message}", line(needle));
        assert!(err.contains(&want), "{want}\nnot in:\n{err}");
    }
}

/// A reload adds, changes and removes calculated points while the device's bus carries on:
/// the read points keep their state, the calculated ones start from their inputs.
#[tokio::test]
async fn a_reload_adds_changes_and_removes_calculated_points_of_a_running_device() {
    let (_sim, addr, _cancel) = start_sim(edge_gateway::modbus::simulator::Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "{}\n[[devices]]\nid = \"meter-1\"\nbus = \"b\"\nunit = 3\npoll_interval_ms = 100\n\
         points = [{{ id = \"voltage\", table = \"input\", address = 0, type = \"f32\" }}]\n",
        tcp_bus(&addr.to_string())
    );
    let with = |expr: &str| {
        format!(
            "{base}[[calculated]]\ndevice = \"meter-1\"\npoint = \"double\"\nexpr = \"{expr}\"\n"
        )
    };
    let gw = Gateway::start(config(dir.path(), &base)).await.unwrap();
    wait_for("voltage", || {
        quality(&gw, "meter-1", "voltage") == Quality::Good
    })
    .await;
    let mut gw = gw;
    for (expr, factor) in [("voltage * 2", 2.0), ("voltage * 3", 3.0)] {
        gw = gw.reload(config(dir.path(), &with(expr))).await.unwrap().0;
        wait_for(expr, || {
            let v = point(&gw, "meter-1", "voltage")
                .value
                .and_then(|v| v.as_f64());
            let d = point(&gw, "meter-1", "double");
            d.quality == Quality::Good && d.value.and_then(|x| x.as_f64()) == v.map(|v| v * factor)
        })
        .await;
    }
    let gw = gw.reload(config(dir.path(), &base)).await.unwrap().0;
    assert_eq!(gw.config.devices[0].points.len(), 1);
    wait_for("voltage still read", || {
        quality(&gw, "meter-1", "voltage") == Quality::Good
    })
    .await;
    gw.shutdown().await;
}

/// Upstream like any point: the MQTT telemetry of its device carries it with its quality.
#[tokio::test]
async fn a_calculated_point_goes_upstream_in_its_devices_telemetry() {
    use common::mqtt::{broker, clear_retained, start_gateway, Watcher};
    let Some(broker) = broker() else { return };
    let (_sim, addr, _c) = start_sim(edge_gateway::modbus::simulator::Profile::Demo).await;
    let id = unique_id("calc-mqtt");
    let mut w = Watcher::start(&broker, &id).await;
    let calc = "[[calculated]]\ndevice = \"boiler\"\npoint = \"setpoint_f\"\nexpr = \"setpoint * 9 / 5 + 32\"\nunit = \"°F\"\n";
    let (gw, _dir) = start_gateway(&id, &broker, addr, "", calc).await;
    gw.write("boiler", "setpoint", Value::Float(65.5))
        .await
        .unwrap();
    let (_, t, _) = w
        .next("/devices/boiler/telemetry", |b| {
            b["points"]["setpoint_f"]["v"]
                .as_f64()
                .is_some_and(|v| (v - 149.9).abs() < 1e-9)
        })
        .await;
    assert_eq!(t["points"]["setpoint_f"]["q"], "good", "{t}");
    clear_retained(&mut w, &id).await;
    gw.shutdown().await;
}

/// Upstream like any point: MySQL's `edge_telemetry` has the calculated point's rows, its value
/// and quality as the gateway had them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calculated_point_reaches_mysql_like_any_point() {
    use mysql_async::prelude::Queryable;
    let url = match std::env::var("EDGE_TEST_MYSQL_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            skipped("EDGE_TEST_MYSQL_URL is not set (./scripts/test sets it to the local MariaDB)");
            return;
        }
    };
    let (_sim, addr, _c) = start_sim(edge_gateway::modbus::simulator::Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let id = unique_id("calc-mysql");
    let body = format!(
        "[mysql]\nurl = \"{url}\"\n{}{BOILER_AND_PUMP}\n[[calculated]]\ndevice = \"boiler\"\n\
         point = \"setpoint_f\"\nexpr = \"setpoint * 9 / 5 + 32\"\n",
        tcp_bus(&addr.to_string())
    );
    let gw = Gateway::start(config_id(&id, dir.path(), &body))
        .await
        .unwrap();
    gw.write("boiler", "setpoint", Value::Float(65.5))
        .await
        .unwrap();
    wait_for("149.9 °F", || {
        point(&gw, "boiler", "setpoint_f").value == Some(Value::Float(149.9))
    })
    .await;
    caught_up(&gw, "mysql").await;
    let pool = mysql_async::Pool::new(url.as_str());
    let mut c = pool.get_conn().await.unwrap();
    let rows: Vec<(Option<String>, String)> = c
        .exec(
            "SELECT value, quality FROM edge_telemetry WHERE gateway_id = ? AND device_id = 'boiler' \
             AND point_id = 'setpoint_f' ORDER BY ts",
            (id.as_str(),),
        )
        .await
        .unwrap();
    drop(c);
    let _ = pool.disconnect().await;
    assert!(
        rows.contains(&(Some("149.9".into()), "good".into())),
        "{rows:?}"
    );
    gw.shutdown().await;
}
