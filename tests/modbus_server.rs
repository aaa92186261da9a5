//! The Modbus TCP server (SPEC "North: Modbus TCP server") read and written by masters we did
//! not write: pymodbus's client and mbpoll (libmodbus), against a field device that is pymodbus
//! too. Mirror reads equal the device's own registers byte for byte; every exception SPEC
//! lists; writes on the audited strict path. Needs `EDGE_PYMODBUS_PYTHON` and `mbpoll`
//! (`scripts/test` installs both); without them each test says it was skipped.

mod common;

use std::process::Command;

use common::*;
use edge_gateway::Gateway;
use serde_json::{json, Value as Json};

/// The field device's points (pymodbus_server.py's unit 1), with the gaps pymodbus has no
/// registers for left out; the writable ones at 100 and 104 and coil 1.
const POINTS: &str = r#"
[[devices]]
id = "py"
bus = "b"
unit = 1
poll_interval_ms = 100
points = [
  { id = "f32", table = "holding", address = 0, type = "f32", unit = "degC" },
  { id = "i32", table = "holding", address = 2, type = "i32" },
  { id = "u64", table = "holding", address = 4, type = "u64" },
  { id = "i16", table = "holding", address = 8, type = "i16" },
  { id = "u16", table = "holding", address = 9, type = "u16" },
  { id = "bit3", table = "holding", address = 9, type = "bool", bit = 3 },
  { id = "text", table = "holding", address = 10, type = "string", length = 5 },
  { id = "w_f64", table = "holding", address = 100, type = "f64", writable = true },
  { id = "w_u16", table = "holding", address = 104, type = "u16", writable = true },
  { id = "in_f32", table = "input", address = 0, type = "f32" },
  { id = "coil0", table = "coil", address = 0, type = "bool" },
  { id = "coil1", table = "coil", address = 1, type = "bool", writable = true },
  { id = "di1", table = "discrete", address = 1, type = "bool" },
]
"#;

fn server_section(listen: &str, allow_writes: bool) -> String {
    format!(
        r#"
[modbus_server]
enabled = true
listen = "{listen}"
allowed_clients = ["127.0.0.1/32"]
allow_writes = {allow_writes}

[[modbus_server.units]]
unit = 1
device = "py"
layout = "mirror"

[[modbus_server.units]]
unit = 2
device = "py"
layout = "float32"
"#
    )
}

fn read(table: &str, unit: u8, address: u16, count: u16) -> Json {
    json!({"op": "read", "table": table, "unit": unit, "address": address, "count": count})
}

/// The same reads of the device itself and of the gateway's mirror unit.
const MIRRORED: [(&str, u16, u16); 6] = [
    ("holding", 0, 15),
    ("holding", 100, 5),
    ("input", 0, 2),
    ("coil", 0, 2),
    ("discrete", 1, 1),
    ("holding", 9, 1),
];

async fn started(py: &str, dir: &std::path::Path) -> (Gateway, Child, u16, u16) {
    let (server, at) = start_pymodbus(py, "tcp", "0", &[]);
    let device: u16 = at.parse().unwrap();
    let body = format!(
        "{}{POINTS}{}",
        tcp_bus(&format!("127.0.0.1:{device}")),
        server_section("127.0.0.1:0", true)
    );
    let gw = Gateway::start(config(dir, &body)).await.unwrap();
    let port = gw.modbus_server_addr().expect("the server listens").port();
    wait_for("every point read good", || {
        ["f32", "w_u16", "coil1", "di1", "in_f32", "text"]
            .iter()
            .all(|p| quality(&gw, "py", p) == edge_gateway::model::Quality::Good)
    })
    .await;
    (gw, server, device, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_reads_the_mirror_byte_for_byte_and_gets_every_spec_exception() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (gw, mut server, device, port) = started(&py, dir.path()).await;

    let ops: Vec<Json> = MIRRORED.iter().map(|&(t, a, n)| read(t, 1, a, n)).collect();
    let direct = pymodbus_client(&py, device, &json!(ops));
    let mirrored = pymodbus_client(&py, port, &json!(ops));
    for (i, (d, m)) in direct.iter().zip(&mirrored).enumerate() {
        assert!(
            d.get("ok").is_some(),
            "the device answers {:?}: {d}",
            MIRRORED[i]
        );
        assert_eq!(d, m, "{:?}: the device and the mirror differ", MIRRORED[i]);
    }

    // float32: every point from 0 in point order, two registers each, big-endian floats.
    let f = pymodbus_client(
        &py,
        port,
        &json!([
            read("holding", 2, 0, 2),
            read("input", 2, 6, 4),
            read("coil", 2, 0, 4)
        ]),
    );
    let float = |w: &Json| {
        let w: Vec<u32> = serde_json::from_value(w["ok"].clone()).unwrap();
        f32::from_bits((w[0] << 16) | w[1])
    };
    assert!((float(&f[0]) - 123.456).abs() < 1e-4, "{f:?}");
    let two = &f[1]["ok"];
    assert_eq!(
        float(&json!({"ok": [two[0], two[1]]})),
        -2.0,
        "i16 at 6: {f:?}"
    );
    assert_eq!(
        float(&json!({"ok": [two[2], two[3]]})),
        65000.0,
        "u16 at 8: {f:?}"
    );
    // Bool points in point order: bit3 of 65000 (0xFDE8: set), coil0, coil1, di1.
    assert_eq!(f[2]["ok"], json!([true, true, false, true]), "{f:?}");

    // Exceptions: 02 for an address no point covers (15, a gap; the string's own registers
    // in float32), 0A for a unit nobody serves. (A count past 125 pymodbus will not send; the
    // hostile test sends it.)
    let e = pymodbus_client(
        &py,
        port,
        &json!([
            read("holding", 1, 15, 1),
            read("holding", 1, 13, 3),
            read("discrete", 1, 0, 2),
            read("holding", 2, 12, 2),
            read("holding", 9, 0, 1),
        ]),
    );
    let codes: Vec<&Json> = e.iter().map(|x| &x["exception"]).collect();
    assert_eq!(
        codes,
        [&json!(2), &json!(2), &json!(2), &json!(2), &json!(10)],
        "{e:?}"
    );

    // The device goes away: once the gateway has it offline, 0B, never the last values.
    unsafe_kill(&mut server);
    wait_for("the device offline", || !online(&gw, "py")).await;
    let gone = pymodbus_client(
        &py,
        port,
        &json!([read("holding", 1, 0, 2), read("holding", 2, 0, 2)]),
    );
    assert_eq!(gone, [json!({"exception": 11}), json!({"exception": 11})]);

    let metrics = http_get(gw.http_addr, "/metrics").await;
    for line in [
        "edge_modbus_server_connections ",
        "edge_modbus_server_requests_total{unit=\"1\",function=\"3\",result=\"ok\"}",
        "edge_modbus_server_requests_total{unit=\"1\",function=\"3\",result=\"illegal_address\"}",
        "edge_modbus_server_requests_total{unit=\"1\",function=\"3\",result=\"target_failed\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_map_onto_whole_points_on_the_audited_strict_path() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (gw, _server, device, port) = started(&py, dir.path()).await;

    let f64_regs = |v: f64| {
        let b = v.to_bits();
        json!([
            (b >> 48) & 0xFFFF,
            (b >> 32) & 0xFFFF,
            (b >> 16) & 0xFFFF,
            b & 0xFFFF
        ])
    };
    let mut both: Vec<Json> = serde_json::from_value(f64_regs(2.5)).unwrap();
    both.push(json!(321));
    let r = pymodbus_client(
        &py,
        port,
        &json!([
            // Two points in one request, in order: w_f64 then w_u16.
            {"op": "write_registers", "unit": 1, "address": 100, "values": both},
            // Half of w_f64: 03. A point not writable: 01. An address no point covers: 02.
            {"op": "write_registers", "unit": 1, "address": 100, "values": [1, 2]},
            {"op": "write_register", "unit": 1, "address": 9, "value": 7},
            {"op": "write_register", "unit": 1, "address": 106, "value": 7},
            // Coil 1 off by FC 5, on by FC 15; coil 0 is not writable, so FC 15 over both: 01.
            {"op": "write_coil", "unit": 1, "address": 1, "value": false},
            {"op": "write_coils", "unit": 1, "address": 1, "values": [true]},
            {"op": "write_coil", "unit": 1, "address": 0, "value": true},
            {"op": "write_coils", "unit": 1, "address": 0, "values": [true, true]},
            // float32: w_u16 is point 8, at registers 16 and 17; a single register is half.
            {"op": "write_registers", "unit": 2, "address": 16, "values": [0x42A0, 0]},
            {"op": "write_register", "unit": 2, "address": 16, "value": 0},
            // In order, stopping at the first failure: w_f64 (point 7) takes 7.5, then w_u16
            // cannot hold 1,000,000 (03) and keeps its 80.
            {"op": "write_registers", "unit": 2, "address": 14, "values": [0x40F0, 0, 0x4974, 0x2400]},
        ]),
    );
    let want = [
        json!({"ok": []}),
        json!({"exception": 3}),
        json!({"exception": 1}),
        json!({"exception": 2}),
        json!({"ok": []}),
        json!({"ok": []}),
        json!({"exception": 1}),
        json!({"exception": 1}),
        json!({"ok": []}),
        json!({"exception": 3}),
        json!({"exception": 3}),
    ];
    assert_eq!(r, want);
    // What the device holds now, read from it directly: 7.5 then 80.0 (float32's 0x42A00000)
    // at 104, coil 1 on.
    let d = pymodbus_client(
        &py,
        device,
        &json!([read("holding", 1, 100, 5), read("coil", 1, 1, 1)]),
    );
    let mut regs = f64_regs(7.5).as_array().unwrap().clone();
    regs.push(json!(80));
    assert_eq!(d[0]["ok"], Json::Array(regs), "{d:?}");
    assert_eq!(d[1]["ok"], json!([true]), "{d:?}");

    // Seven writes reached the device's path (the refused requests wrote nothing): six ok,
    // the last refused by the strict encoding, each as the client's address.
    let by_modbus = audit_from(&gw, "modbus").await;
    assert_eq!(by_modbus.len(), 7, "{by_modbus:?}");
    assert!(
        by_modbus.iter().all(|a| a["user"] == "modbus:127.0.0.1"),
        "{by_modbus:?}"
    );
    let ok = by_modbus.iter().filter(|a| a["result"] == "ok").count();
    assert_eq!(ok, 6, "{by_modbus:?}");
    assert_ne!(
        by_modbus[0]["result"], "ok",
        "the newest is the refused one: {by_modbus:?}"
    );

    // Writes off: a reload with allow_writes = false answers every write 01, writes nothing.
    let listen = gw.modbus_server_addr().unwrap().to_string();
    let body = format!(
        "{}{POINTS}{}",
        tcp_bus(&format!("127.0.0.1:{device}")),
        server_section(&listen, false)
    );
    let (gw, _) = gw.reload(config(dir.path(), &body)).await.unwrap();
    let off = pymodbus_client(
        &py,
        port,
        &json!([{"op": "write_register", "unit": 1, "address": 104, "value": 5}]),
    );
    assert_eq!(off, [json!({"exception": 1})]);
    gw.shutdown().await;
}

/// mbpoll (libmodbus): an independent master reads the mirror and the float32 layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_the_mirror_and_the_floats() {
    let Some(py) = python() else { return };
    if Command::new("mbpoll").arg("-h").output().is_err() {
        skipped("mbpoll is not installed (scripts/test installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (gw, _server, _device, port) = started(&py, dir.path()).await;
    let mbpoll = |args: &[&str]| {
        let out = Command::new("mbpoll")
            .args(["-m", "tcp", "-p", &port.to_string(), "-1", "-0"])
            .args(args)
            .arg("127.0.0.1")
            .output()
            .expect("run mbpoll");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // Holding register 9 (u16 65000) of the mirror, and point 0 of float32 as a float.
    let raw = mbpoll(&["-a", "1", "-t", "4", "-r", "9", "-c", "1"]);
    assert!(
        raw.contains("[9]: \t65000") || raw.contains("[9]:\t65000"),
        "{raw}"
    );
    let float = mbpoll(&["-a", "2", "-t", "4:float", "-B", "-r", "0", "-c", "1"]);
    assert!(float.contains("123.456"), "{float}");
    gw.shutdown().await;
}
