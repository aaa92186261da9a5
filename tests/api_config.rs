//! The dashboard's commissioning and config services over a real socket: devices described,
//! raw registers, bus scans, the config edited, applied and rolled back (reloads themselves:
//! `api_reload.rs`).

mod common;

use common::wsclient::*;
use common::*;
use edge_gateway::modbus::simulator::{Profile, BOILER};
use serde_json::{json, Value as Json};

/// The dashboard's two services beyond SPEC.md: the configuration beside live values, and raw
/// reads for the register inspector (admin only, in the bus's turn, errors as codes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_describe_and_registers_read_serve_the_dashboard() {
    let (gw, sim, _dir) = gateway("").await;
    sim.with_memory(BOILER, |m| {
        m.holding[10] = 0x4148;
        m.holding[11] = 0x0000;
    });
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("viewer", "viewer").await;
    let r = ws.call("devices.describe", json!({})).await;
    assert_eq!(code(&r), 0, "{r}");
    let boiler = &r["data"]["devices"][0];
    assert_eq!(
        (
            boiler["id"].as_str(),
            boiler["bus"].as_str(),
            boiler["unit"].as_u64()
        ),
        (Some("boiler"), Some("b"), Some(1))
    );
    let sp = &boiler["points"][1];
    assert_eq!(
        (
            sp["id"].as_str(),
            sp["type"].as_str(),
            sp["table"].as_str(),
            sp["address"].as_u64(),
            sp["writable"].as_bool()
        ),
        (
            Some("setpoint"),
            Some("u16"),
            Some("holding"),
            Some(2),
            Some(true)
        )
    );
    let read = json!({"deviceId": "boiler", "table": "holding", "address": 10, "count": 2});
    assert_eq!(
        code(&ws.call("registers.read", read.clone()).await),
        403,
        "viewers cannot read raw"
    );

    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    let r = ws.call("registers.read", read).await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(r["data"]["registers"], json!([0x4148, 0]));
    let r = ws
        .call(
            "registers.read",
            json!({"deviceId": "boiler", "table": "coil", "address": 0, "count": 1}),
        )
        .await;
    assert!(r["data"]["bits"].is_array(), "{r}");
    for (params, want) in [
        (
            json!({"deviceId": "boiler", "table": "holding", "address": 0, "count": 126}),
            400,
        ),
        (
            json!({"deviceId": "boiler", "table": "fifo", "address": 0}),
            400,
        ),
        (
            json!({"deviceId": "boiler", "table": "holding", "address": 65535, "count": 2}),
            400,
        ),
        (json!({"deviceId": "nope", "table": "holding"}), 404),
        // The simulator has no register 60000: the device's exception, named.
        (
            json!({"deviceId": "boiler", "table": "holding", "address": 60000, "count": 1}),
            503,
        ),
    ] {
        let r = ws.call("registers.read", params.clone()).await;
        assert_eq!(code(&r), want, "{params} → {r}");
    }
    gw.shutdown().await;
}

/// SPEC `bus.scan` on a live bus: each unit probed is pushed as `push.scan`, the reply lists the
/// units that answered; polling goes on meanwhile; `bus.scanCancel` ends it; `registers.read`
/// takes `bus` + `unit`, so a unit the config does not know can be inspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_scan_finds_the_units_of_a_live_bus_and_the_inspector_reads_any_of_them() {
    let (gw, _sim, _dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    let r = ws
        .call(
            "bus.scan",
            json!({"bus": "b", "fromUnit": 1, "toUnit": 6, "timeoutMs": 50}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    // The demo simulator has units 1-3; the config knows 1 and 2.
    assert_eq!(r["data"]["units"], json!([1, 2, 3]), "{r}");
    let mut seen = Vec::new();
    for _ in 1..=6 {
        let p = ws.next_push("push.scan").await;
        seen.push((
            p["data"]["unit"].as_u64().unwrap(),
            p["data"]["found"] == true,
        ));
    }
    assert_eq!(
        seen,
        [
            (1, true),
            (2, true),
            (3, true),
            (4, false),
            (5, false),
            (6, false)
        ]
    );
    let r = ws
        .call(
            "registers.read",
            json!({"bus": "b", "unit": 3, "table": "holding", "address": 0, "count": 2}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(
        (
            r["data"]["unit"].as_u64(),
            r["data"]["registers"].as_array().map(Vec::len)
        ),
        (Some(3), Some(2))
    );

    // A long scan, cancelled from another connection; the configured devices polled meanwhile.
    let mut scanner = Ws::connect(gw.http_addr).await;
    scanner.login("admin", "admin").await;
    scanner
        .send_text(
            json!({"requestId": "long", "service": "bus.scan", "params": {"bus": "b", "timeoutMs": 100}})
                .to_string(),
        )
        .await;
    scanner.next_push("push.scan").await;
    let ok = requests(&gw, "boiler", "ok");
    wait_for("boiler polled during the scan", || {
        requests(&gw, "boiler", "ok") >= ok + 5
    })
    .await;
    let again = ws.call("bus.scan", json!({"bus": "b"})).await;
    assert_eq!(code(&again), 429, "one scan per bus at a time: {again}");
    assert_eq!(
        code(&ws.call("bus.scanCancel", json!({"bus": "b"})).await),
        0
    );
    let reply = loop {
        let m = scanner.recv().await.expect("reply");
        if m["requestId"] == "long" {
            break m;
        }
    };
    assert_eq!(code(&reply), 0, "{reply}");
    assert_eq!(reply["data"]["cancelled"], true, "{reply}");
    assert_eq!(reply["data"]["units"], json!([1, 2, 3]), "{reply}");
    for (params, want) in [
        (json!({"bus": "nope"}), 404),
        (json!({"bus": "b", "fromUnit": 0}), 400),
        (json!({"bus": "b", "fromUnit": 9, "toUnit": 3}), 400),
        (json!({"bus": "b", "timeoutMs": 1}), 400),
    ] {
        let r = ws.call("bus.scan", params.clone()).await;
        assert_eq!(code(&r), want, "{params} → {r}");
    }
    let mut viewer = Ws::connect(gw.http_addr).await;
    viewer.login("viewer", "viewer").await;
    assert_eq!(
        code(&viewer.call("bus.scan", json!({"bus": "b"})).await),
        403
    );
    gw.shutdown().await;
}

/// SPEC `config.*`: the technician's file (comments and all) read, checked, changed, applied
/// as a reload and rolled back from the WebSocket, with no file edited by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn the_config_is_edited_applied_and_rolled_back_from_the_websocket() {
    let (_sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let pump_at = BOILER_AND_PUMP.find("[[devices]]\nid = \"pump\"").unwrap();
    let original = format!(
        "# The boiler room's gateway. Keep this comment.\n[gateway]\nid = \"g\"\ndata_dir = {:?}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n{}{}{}",
        dir.path().display().to_string(),
        users_and_push(""),
        tcp_bus(&sim_addr.to_string()),
        &BOILER_AND_PUMP[..pump_at]
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &original).unwrap();
    let (_gw, addr) = spawn_gateway(gateway_command(&path), None);
    let admin = || async move {
        let mut ws = Ws::connect(addr).await;
        assert_eq!(code(&ws.login("admin", "admin").await), 0);
        ws
    };
    let mut ws = admin().await;
    let r = ws.call("config.get", json!({})).await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(r["data"]["text"], original.as_str());
    assert_eq!(r["data"]["config"]["devices"][0]["id"], "boiler");

    // Checked as check-config checks: every problem, by key path and line.
    let broken = format!("{original}[store]\nmax_db_mb = 0\ncolour = 1\n");
    let r = ws.call("config.validate", json!({ "text": broken })).await;
    let problems = r["data"]["problems"].as_array().unwrap();
    let paths: Vec<&str> = problems
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"store.colour") && paths.contains(&"store.max_db_mb"),
        "{r}"
    );
    assert!(problems.iter().all(|p| p["line"].as_u64().is_some()), "{r}");
    let r = ws.call("config.apply", json!({ "text": broken })).await;
    assert_eq!(code(&r), 400, "{r}");
    assert_eq!(
        r["data"]["problems"].as_array().map(Vec::len),
        Some(problems.len())
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        original,
        "nothing written"
    );

    // A viewer watching while the admin applies (SPEC "Reload", #31 item 1): neither socket
    // closes, and the viewer's pushes go on, now with the added device's.
    let mut viewer = Ws::connect(addr).await;
    viewer.login("viewer", "viewer").await;
    // Applied: the file as given, a version, a reload; this socket stays open.
    let edited = format!(
        "{original}\n# Added from the dashboard.\n{}",
        &BOILER_AND_PUMP[pump_at..]
    );
    let r = ws.call("config.apply", json!({ "text": edited })).await;
    assert_eq!(code(&r), 0, "{r}");
    assert!(
        r["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("devices +pump"),
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        edited,
        "comments kept"
    );
    // The added device reaches the viewer in a telemetry push, or in the snapshot a moved
    // socket is sent on joining the new gateway: the pump's first poll (its values do not
    // change after it) may come before the viewer has moved, and then the snapshot has it.
    loop {
        let p = viewer.next_push_any().await;
        let pump = |d: &Json| d["id"] == "pump" && d["online"] == true;
        let in_snapshot = p["service"] == "push.snapshot"
            && p["data"]["devices"]
                .as_array()
                .is_some_and(|d| d.iter().any(pump));
        if in_snapshot || (p["service"] == "push.telemetry" && p["data"]["deviceId"] == "pump") {
            break;
        }
    }
    let devices = |ws: Ws| async move {
        let mut ws = ws;
        let r = ws.call("devices.list", json!({})).await;
        let ids: Vec<String> = r["data"]["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        ids
    };
    let ws_ids = |r: Json| -> Vec<String> {
        r["data"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ws_ids(ws.call("devices.list", json!({})).await),
        ["boiler", "pump"],
        "the admin's socket, logged in still, in the new gateway"
    );
    // An info event of the gateway says who applied what.
    let r = ws
        .call("events.query", json!({"type": "config_applied"}))
        .await;
    let e = &r["data"]["events"][0];
    assert_eq!(
        (e["deviceId"].as_str(), e["state"].as_str()),
        (Some("g"), Some("info")),
        "{r}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("config applied by admin: devices +pump"),
        "{r}"
    );
    let r = ws.call("config.history", json!({})).await;
    let versions = r["data"]["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 2, "{r}");
    assert_eq!(
        (versions[0]["user"].as_str(), versions[1]["user"].as_str()),
        (Some("admin"), Some("startup"))
    );

    // Rolled back to the file it started with.
    let first = versions[1]["id"].clone();
    let r = ws.call("config.rollback", json!({ "id": first })).await;
    assert_eq!(code(&r), 0, "{r}");
    assert!(
        r["data"]["summary"].as_str().unwrap().contains("-pump"),
        "{r}"
    );
    wait_for_async("the pump gone", || async {
        devices(admin().await).await == ["boiler"]
    })
    .await;
    assert_eq!(ws_ids(ws.call("devices.list", json!({})).await), ["boiler"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    let mut ws = admin().await;
    assert_eq!(
        code(&ws.call("config.rollback", json!({ "id": 99 })).await),
        404
    );
    // Each attempt is in the audit, newest first: the rollback, the edit, the refused text.
    let r = ws.call("audit.query", json!({})).await;
    let entries = r["data"]["entries"].as_array().unwrap().clone();
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["pointId"].as_str().unwrap(),
                e["value"].as_str().unwrap(),
                e["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3, "{r}");
    assert!(
        seen[0].1.starts_with("version 3: ") && seen[0].2 == "ok",
        "{r}"
    );
    assert!(seen[1].1.starts_with("version 2: devices +pump"), "{r}");
    assert_eq!(seen[2].1, "not applied", "{r}");
    assert!(seen[2].2.contains("problem(s)"), "{r}");
    assert!(seen.iter().all(|s| s.0 == "config"), "{r}");
    assert_eq!(entries[0]["user"], "admin");
    assert_eq!(code(&viewer.call("config.get", json!({})).await), 403);
    assert_eq!(code(&viewer.call("audit.query", json!({})).await), 403);
}

/// #31, item 4: `registers.read` aimed at a silent unit stopped all polling on its bus (4/s →
/// 0/s): operator requests went ahead of every poll. Now one operator request, then a due
/// poll: the boiler on the same bus goes on being polled through a flood of reads that each
/// time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_aimed_at_a_silent_unit_leave_the_bus_polling() {
    let (gw, _sim, _dir) = gateway("").await;
    wait_for("online", || online(&gw, "boiler")).await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    let polls = || requests(&gw, "boiler", "ok") + requests(&gw, "pump", "ok");
    let before = polls();
    // 16 reads of unit 9, which the simulator does not have: each one waits out the 200 ms
    // timeout (3.2 s of the bus in all).
    let n: u64 = 16;
    reads_of_a_silent_unit(&mut ws, n).await;
    let mut replies = 0;
    while replies < n {
        let m = ws.recv().await.expect("open");
        if m["service"] == "registers.read" {
            assert_eq!(code(&m), 503, "{m}");
            replies += 1;
        }
    }
    let polled = polls() - before;
    // One poll (of two requests) at least between two reads; before, none at all.
    assert!(
        polled >= 2 * (n - 2),
        "{polled} poll requests during {n} timed-out reads"
    );
    gw.shutdown().await;
}
