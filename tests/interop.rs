//! Interop with Modbus code we did not write: pymodbus as a TCP server, as an RTU server on a
//! socat pty pair, as an RTU-over-TCP server, and as ten slaves behind a line with a baud rate. Needs `EDGE_PYMODBUS_PYTHON` (a python with
//! pymodbus; `.ci/run` makes one); without it every test here says it was skipped.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use edge_gateway::model::{Quality, Value};
use edge_gateway::Gateway;

/// Every type and order pymodbus serves (see pymodbus_server.py), as gateway points.
fn points() -> String {
    let mut p = vec![
        r#"{ id = "f32", table = "holding", address = 0, type = "f32" }"#.to_string(),
        r#"{ id = "i32", table = "holding", address = 2, type = "i32" }"#.into(),
        r#"{ id = "u64", table = "holding", address = 4, type = "u64" }"#.into(),
        r#"{ id = "i16", table = "holding", address = 8, type = "i16" }"#.into(),
        r#"{ id = "u16", table = "holding", address = 9, type = "u16" }"#.into(),
        r#"{ id = "string", table = "holding", address = 10, type = "string", length = 5 }"#.into(),
        r#"{ id = "f64", table = "holding", address = 15, type = "f64" }"#.into(),
        r#"{ id = "i64", table = "holding", address = 19, type = "i64" }"#.into(),
        r#"{ id = "u32", table = "holding", address = 23, type = "u32" }"#.into(),
        r#"{ id = "scaled", table = "holding", address = 9, type = "u16", scale = 0.01, offset = -100.0 }"#.into(),
        r#"{ id = "input_f32", table = "input", address = 0, type = "f32" }"#.into(),
        r#"{ id = "coil0", table = "coil", address = 0, type = "bool" }"#.into(),
        r#"{ id = "coil1", table = "coil", address = 1, type = "bool", writable = true }"#.into(),
        r#"{ id = "di1", table = "discrete", address = 1, type = "bool" }"#.into(),
        r#"{ id = "bit0_of_u16", table = "holding", address = 9, type = "bool", bit = 3 }"#.into(),
        r#"{ id = "w_f64", table = "holding", address = 100, type = "f64", writable = true }"#.into(),
        r#"{ id = "w_u16", table = "holding", address = 104, type = "u16", writable = true }"#.into(),
    ];
    for (k, (bo, wo)) in [
        ("big", "big"),
        ("little", "little"),
        ("little", "big"),
        ("big", "little"),
    ]
    .iter()
    .enumerate()
    {
        let o = format!(r#"byte_order = "{bo}", word_order = "{wo}""#);
        p.push(format!(
            r#"{{ id = "f32_{k}", table = "holding", address = {}, type = "f32", {o} }}"#,
            30 + 2 * k
        ));
        p.push(format!(
            r#"{{ id = "f64_{k}", table = "holding", address = {}, type = "f64", {o} }}"#,
            40 + 4 * k
        ));
        p.push(format!(
            r#"{{ id = "u32_{k}", table = "holding", address = {}, type = "u32", {o} }}"#,
            60 + 2 * k
        ));
        p.push(format!(
            r#"{{ id = "i64_{k}", table = "holding", address = {}, type = "i64", {o} }}"#,
            70 + 4 * k
        ));
    }
    // The holding points span gaps pymodbus has no registers for: a plan of one merged read
    // gets exception 02 and must split around them.
    format!(
        "[[devices]]\nid = \"py\"\nbus = \"b\"\nunit = 1\npoll_interval_ms = 200\nmax_gap = 125\npoints = [\n  {}\n]\n",
        p.join(",\n  ")
    )
}

fn float(gw: &Gateway, id: &str) -> f64 {
    point(gw, "py", id)
        .value
        .and_then(|v| v.as_f64())
        .unwrap_or(f64::NAN)
}

async fn check_every_type_and_order(gw: &Gateway) {
    let ids: Vec<String> = gw.config.devices[0]
        .points
        .iter()
        .map(|p| p.id.clone())
        .collect();
    wait_for("every point good", || {
        ids.iter().all(|id| quality(gw, "py", id) == Quality::Good)
    })
    .await;
    assert!((float(gw, "f32") - 123.456).abs() < 1e-4);
    assert_eq!(point(gw, "py", "i32").value, Some(Value::Int(-123456)));
    assert_eq!(
        point(gw, "py", "u64").value,
        Some(Value::UInt(0x0102030405060708))
    );
    assert_eq!(point(gw, "py", "i16").value, Some(Value::Int(-2)));
    assert_eq!(point(gw, "py", "u16").value, Some(Value::Int(65000)));
    assert_eq!(
        point(gw, "py", "string").value,
        Some(Value::Text("HELLO-PLC!".into()))
    );
    assert_eq!(point(gw, "py", "f64").value, Some(Value::Float(-1.5)));
    assert_eq!(point(gw, "py", "i64").value, Some(Value::Int(-5)));
    assert_eq!(point(gw, "py", "u32").value, Some(Value::Int(0x12345678)));
    assert!((float(gw, "scaled") - 550.0).abs() < 1e-9);
    assert!((float(gw, "input_f32") + 40.25).abs() < 1e-9);
    assert_eq!(point(gw, "py", "coil0").value, Some(Value::Bool(true)));
    assert_eq!(point(gw, "py", "di1").value, Some(Value::Bool(true)));
    // 65000 = 0xFDE8: bit 3 is set.
    assert_eq!(
        point(gw, "py", "bit0_of_u16").value,
        Some(Value::Bool(true))
    );
    for k in 0..4 {
        assert!(
            (float(gw, &format!("f32_{k}")) - 123.456).abs() < 1e-4,
            "f32 order {k}"
        );
        assert_eq!(
            point(gw, "py", &format!("f64_{k}")).value,
            Some(Value::Float(-1.5)),
            "f64 order {k}"
        );
        assert_eq!(
            point(gw, "py", &format!("u32_{k}")).value,
            Some(Value::Int(0x12345678)),
            "u32 order {k}"
        );
        assert_eq!(
            point(gw, "py", &format!("i64_{k}")).value,
            Some(Value::Int(-5)),
            "i64 order {k}"
        );
    }
    // Writes: FC 16 for an f64, FC 6 for a u16, FC 5 for a coil; read back by polling.
    gw.write("py", "w_f64", Value::Float(2.25)).await.unwrap();
    gw.write("py", "w_u16", Value::Int(4321)).await.unwrap();
    gw.write("py", "coil1", Value::Bool(true)).await.unwrap();
    wait_for("writes read back", || {
        point(gw, "py", "w_f64").value == Some(Value::Float(2.25))
            && point(gw, "py", "w_u16").value == Some(Value::Int(4321))
            && point(gw, "py", "coil1").value == Some(Value::Bool(true))
    })
    .await;
}

#[tokio::test]
async fn pymodbus_tcp_every_type_and_order_reads_and_writes() {
    let Some(py) = python() else { return };
    let (_server, port) = start_pymodbus(&py, "tcp", "0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{}", tcp_bus(&format!("127.0.0.1:{port}")), points()),
    ))
    .await
    .unwrap();
    check_every_type_and_order(&gw).await;
    gw.shutdown().await;
}

/// SPEC `kind = "rtu_over_tcp"`: RTU frames with CRC on a TCP socket, against pymodbus's RTU
/// framer on a TCP server (how a serial server in transparent mode carries them).
#[tokio::test]
async fn pymodbus_rtu_over_tcp_every_type_and_order_reads_and_writes() {
    let Some(py) = python() else { return };
    let (_server, port) = start_pymodbus(&py, "rtu_over_tcp", "0", &[]);
    let bus = format!(
        "[[buses]]\nname = \"b\"\nkind = \"rtu_over_tcp\"\naddress = \"127.0.0.1:{port}\"\ntimeout_ms = 500\nretries = 1\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &format!("{bus}{}", points())))
        .await
        .unwrap();
    check_every_type_and_order(&gw).await;
    gw.shutdown().await;
    let at = format!("127.0.0.1:{port}");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(&[
            "read",
            "--rtu-over-tcp",
            &at,
            "--unit",
            "1",
            "--table",
            "holding",
            "--address",
            "4",
            "--type",
            "u64",
        ])
    })
    .await
    .unwrap();
    assert_eq!((code, out.trim()), (0, "72623859790382856"), "{err}");
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn pymodbus_tcp_commissioning_cli_reads_writes_and_names_exceptions() {
    let Some(py) = python() else { return };
    let (_server, port) = start_pymodbus(&py, "tcp", "0", &[]);
    let tcp = format!("127.0.0.1:{port}");
    let base = ["--tcp", tcp.as_str(), "--unit", "1"];
    let run = |extra: &[&str]| {
        let mut a = vec!["read"];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        cli(&a)
    };
    let (code, out, err) = run(&[
        "--table",
        "holding",
        "--address",
        "32",
        "--type",
        "f32",
        "--byte-order",
        "little",
        "--word-order",
        "little",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().starts_with("123.456"), "{out}");
    let (code, out, _) = run(&[
        "--table",
        "coil",
        "--address",
        "0",
        "--count",
        "4",
        "--json",
    ]);
    assert_eq!(
        (code, out.trim()),
        (0, r#"{"values":[true,false,true,true]}"#)
    );
    let (code, _, err) = run(&["--table", "holding", "--address", "500"]);
    assert_eq!(code, 2);
    assert!(err.contains("illegal data address"), "{err}");
    let (code, out, _) = cli(&[
        "write",
        "--tcp",
        &tcp,
        "--unit",
        "1",
        "--table",
        "holding",
        "--address",
        "106",
        "--type",
        "i32",
        "--word-order",
        "little",
        "--value",
        "-7",
    ]);
    assert_eq!((code, out.trim()), (0, "ok"));
    let (code, out, _) = run(&[
        "--table",
        "holding",
        "--address",
        "106",
        "--count",
        "2",
        "--json",
    ]);
    assert_eq!(
        (code, out.trim()),
        (0, r#"{"values":[65529,65535]}"#),
        "-7 = 0xFFFFFFF9 as i32, low word first"
    );
}

#[tokio::test]
async fn pymodbus_rtu_on_a_pty_pair_every_type_and_order_reads_and_writes() {
    let Some(py) = python() else { return };
    let Some(pair) = pty_pair().await else {
        skipped("socat is not installed");
        return;
    };
    let _server = start_pymodbus(&py, "rtu", &pair.a, &[]);
    let bus = format!(
        "[[buses]]\nname = \"b\"\nkind = \"rtu\"\nport = \"{}\"\nbaud = 19200\ntimeout_ms = 500\nretries = 1\n",
        pair.b
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &format!("{bus}{}", points())))
        .await
        .unwrap();
    check_every_type_and_order(&gw).await;
    gw.shutdown().await;
    // The commissioning CLI on the same line: a value, and an exception named.
    let serial = |address: &'static str, ty: &'static str| {
        let port = pair.b.clone();
        tokio::task::spawn_blocking(move || {
            cli(&[
                "read",
                "--serial",
                &port,
                "--baud",
                "19200",
                "--unit",
                "1",
                "--table",
                "holding",
                "--address",
                address,
                "--type",
                ty,
            ])
        })
    };
    let (code, out, err) = serial("4", "u64").await.unwrap();
    assert_eq!((code, out.trim()), (0, "72623859790382856"), "{err}");
    let (code, _, err) = serial("500", "u16").await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("illegal data address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_a_register_changed_by_another_client_arrives_as_a_websocket_event() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some(py) = python() else { return };
    let (_server, port) = start_pymodbus(&py, "tcp", "0", &[]);
    let hash = edge_gateway::cli::hash_password("pw").unwrap();
    let body = format!(
        "[[users]]\nname = \"tech\"\nrole = \"viewer\"\npassword_hash = \"{hash}\"\n{}\n\
         [[devices]]\nid = \"tank\"\nbus = \"b\"\nunit = 1\npoll_interval_ms = 200\n\
         points = [{{ id = \"level\", table = \"holding\", address = 105, type = \"u16\" }}]\n\
         [[rules]]\nid = \"tank-full\"\ndevice = \"tank\"\npoint = \"level\"\nkind = \"above\"\nthreshold = 1000.0\npriority = \"high\"\n",
        tcp_bus(&format!("127.0.0.1:{port}"))
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr))
        .await
        .unwrap();
    let login = serde_json::json!({"requestId": "1", "service": "auth.login", "params": {"username": "tech", "password": "pw"}});
    ws.send(Message::Text(login.to_string().into()))
        .await
        .unwrap();
    wait_for("polled", || quality(&gw, "tank", "level") == Quality::Good).await;
    // Another Modbus client (our CLI, its own connection) changes the register on pymodbus.
    let tcp = format!("127.0.0.1:{port}");
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        cli(&[
            "write",
            "--tcp",
            &tcp,
            "--unit",
            "1",
            "--table",
            "holding",
            "--address",
            "105",
            "--value",
            "4321",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let event = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("an event within 30 s");
        if let Some(Ok(Message::Text(t))) = m {
            let j: serde_json::Value = serde_json::from_str(&t).unwrap();
            if j["service"] == "push.event" && j["data"]["type"] == "threshold_exceeded" {
                break j["data"].clone();
            }
        }
    };
    assert_eq!(
        (
            event["deviceId"].as_str(),
            event["value"].as_i64(),
            event["priority"].as_str()
        ),
        (Some("tank"), Some(4321), Some("high"))
    );
    gw.shutdown().await;
}

/// #19: three pymodbus slaves behind a line with a baud rate (`common::line`, 9600 8E1,
/// 2 ms turnaround): every request comes at least 3.5 characters after the frame before it
/// ended (the Modbus serial line spec; a conforming slave takes an early request as part of
/// the last frame), every slave is polled, and a corrupted answer, then one missing a byte, is
/// each a `link:` fault of the slave it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn pymodbus_slaves_on_a_9600_baud_line_get_the_silence_the_spec_owes() {
    use common::line::{LineSpec, SlowLine};
    use std::fmt::Write as _;
    let Some(py) = python() else { return };
    let (_server, port) = start_pymodbus(&py, "rtu_over_tcp", "0", &["units=3"]);
    let spec = LineSpec {
        baud: 9600,
        bits: 11,
        turnaround: Duration::from_millis(2),
    };
    let Some(line) = SlowLine::start(spec, format!("127.0.0.1:{port}").parse().unwrap()) else {
        skipped("socat is not installed (./scripts/test installs it)");
        return;
    };
    let mut body = format!(
        "[[buses]]\nname = \"b\"\nkind = \"rtu\"\nport = \"{}\"\nbaud = 9600\nparity = \"even\"\ntimeout_ms = 300\nretries = 0\n",
        line.port
    );
    for u in 1..=3 {
        let _ = write!(
            body,
            "[[devices]]\nid = \"s{u}\"\nbus = \"b\"\nunit = {u}\npoll_interval_ms = 10\npoints = [\n  \
             {{ id = \"r0\", table = \"holding\", address = 0, type = \"u16\" }},\n  \
             {{ id = \"r9\", table = \"holding\", address = 9, type = \"u16\" }},\n]\n"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    for u in 1..=3i64 {
        let id = format!("s{u}");
        wait_for("every slave read", || {
            point(&gw, &id, "r9").value == Some(Value::Int(100 * u + 9))
        })
        .await;
    }
    line.take_silences();
    let n = line.requests();
    wait_for("60 more requests", || line.requests() >= n + 60).await;
    let silences = line.take_silences();
    let shortest = silences.iter().min().copied().unwrap_or_default();
    assert!(silences.len() >= 60, "{} silences", silences.len());
    assert!(
        shortest >= spec.silence(),
        "a request {shortest:?} after the frame before it, under the {:?} owed",
        spec.silence()
    );
    // A pause inside an answer: counted as a gap on the bus.
    let wire = gw.metrics.buses[0].wire.get().unwrap().clone();
    line.stall(Duration::from_millis(15));
    wait_for("a gap counted", || {
        wire.frame_gaps.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    // One answer's bytes flipped on the line.
    // Link faults raised and cleared so far, over the three slaves.
    let episodes = || async {
        let (mut raised, mut cleared) = (0, 0);
        for u in 1..=3 {
            for e in link_events(&gw, &format!("s{u}")).await {
                if e["state"] == "active" {
                    raised += 1;
                } else {
                    cleared += 1;
                }
            }
        }
        (raised, cleared)
    };
    line.corrupt(1);
    wait_for_async("a link fault named", || async { episodes().await.0 > 0 }).await;
    // Over (three good polls), then one answer byte lost on the line: a fault again.
    wait_for_async("the fault cleared", || async {
        let (raised, cleared) = episodes().await;
        raised == cleared
    })
    .await;
    let (before, _) = episodes().await;
    line.drop_bytes(1);
    wait_for_async("a lost byte named", || async {
        episodes().await.0 > before
    })
    .await;
    // The bytes both ways, and their share of the wire at 9600 baud.
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    assert!(wire.sent.load(relaxed) >= 8 * 60 && wire.received.load(relaxed) >= 9 * 60);
    assert!(wire.utilisation().is_some_and(|u| u > 0.0 && u <= 1.0));
    gw.shutdown().await;
}

/// #19: RTU over TCP to a serial server in front of a 19200-baud line (the same relay, exposed
/// as a TCP socket): every slave polled at the line's pace. The serial server keeps the line's
/// silences itself; the gateway does not know its baud rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_slaves_behind_a_serial_server_are_polled_over_rtu_over_tcp() {
    use common::line::{LineSpec, SlowLine};
    use std::fmt::Write as _;
    let Some(py) = python() else { return };
    let (_server, port) = start_pymodbus(&py, "rtu_over_tcp", "0", &["units=2"]);
    let spec = LineSpec {
        baud: 19200,
        bits: 11,
        turnaround: Duration::from_millis(2),
    };
    let line = SlowLine::start_tcp(spec, format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    let mut body = format!(
        "[[buses]]\nname = \"b\"\nkind = \"rtu_over_tcp\"\naddress = \"{}\"\ntimeout_ms = 300\nretries = 0\n",
        line.port
    );
    for u in 1..=2 {
        let _ = write!(
            body,
            "[[devices]]\nid = \"s{u}\"\nbus = \"b\"\nunit = {u}\npoll_interval_ms = 10\n\
             points = [ {{ id = \"r5\", table = \"holding\", address = 5, type = \"u16\" }} ]\n"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    for u in 1..=2i64 {
        let id = format!("s{u}");
        wait_for("every slave read", || {
            point(&gw, &id, "r5").value == Some(Value::Int(100 * u + 5))
        })
        .await;
    }
    let n = line.requests();
    wait_for("20 more requests through the line", || {
        line.requests() >= n + 20
    })
    .await;
    gw.shutdown().await;
}

/// `bus.scan` against pymodbus: a server holding unit 1 answers every other id with an
/// exception, so only unit 1 is found; a server answering every id alike is one device, said
/// so, not five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_tells_a_single_device_server_from_a_line_of_devices() {
    use common::wsclient::{code, users_and_push, Ws};
    use serde_json::json;
    let Some(py) = python() else { return };
    for (extra, units, every_id) in [
        (&[][..], json!([1]), false),
        (&["any"][..], json!([1]), true),
    ] {
        let (_server, port) = start_pymodbus(&py, "tcp", "0", extra);
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "{}{}",
            users_and_push(""),
            tcp_bus(&format!("127.0.0.1:{port}"))
        );
        let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
        let mut ws = Ws::connect(gw.http_addr).await;
        ws.login("admin", "admin").await;
        let r = ws
            .call(
                "bus.scan",
                json!({"bus": "b", "fromUnit": 1, "toUnit": 5, "timeoutMs": 500}),
            )
            .await;
        assert_eq!(code(&r), 0, "{r}");
        assert_eq!(r["data"]["units"], units, "{extra:?}: {r}");
        assert_eq!(r["data"]["everyId"], every_id, "{extra:?}: {r}");
        let note = r["data"]["note"].as_str().unwrap_or_default();
        if every_id {
            assert!(note.contains("every unit id"), "{r}");
        } else {
            // pymodbus answers an id it does not serve with exception 04 (its datastore's
            // KeyError): most ids saying the same thing is the server's "no such device".
            assert!(note.contains("no device has that id"), "{r}");
        }
        gw.shutdown().await;
    }
}
