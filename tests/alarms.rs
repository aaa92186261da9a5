//! Events and alarms over the WebSocket, on a real clock against the simulator: `push.event`
//! after commit, subscriptions by type and priority, `alarms.active`, `alarms.ack` by role,
//! `events.query` filters and paging.

mod common;

use std::time::Duration;

use common::ws::*;
use common::*;
use edge_gateway::modbus::simulator::{Profile, BOILER};
use edge_gateway::Gateway;
use serde_json::{json, Value as Json};

/// The next `push.event` of `kind`: within 60 s (other pushes keep coming, so `next`'s own
/// timeout would never fire and a missed event would hang the test).
async fn next_event(s: &mut Stream, kind: &str) -> Json {
    let wait = async {
        loop {
            let m = next(s).await;
            if is_event(&m, kind) {
                return m["data"].clone();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("no {kind} event within 60 s"))
}

fn is_event(m: &Json, kind: &str) -> bool {
    m["service"] == "push.event" && m["data"]["type"] == kind
}

fn body(addr: &str) -> String {
    let admin = edge_gateway::cli::hash_password("admin").unwrap();
    let viewer = edge_gateway::cli::hash_password("viewer").unwrap();
    format!(
        r#"[[users]]
name = "admin"
role = "admin"
password_hash = "{admin}"
[[users]]
name = "viewer"
role = "viewer"
password_hash = "{viewer}"
{}{BOILER_AND_PUMP}
[[rules]]
id = "setpoint-high"
device = "boiler"
point = "setpoint"
kind = "above"
threshold = 90.0
clear = 85.0
priority = "emergency"
message = "Setpoint too high"
"#,
        tcp_bus(addr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn an_alarm_is_pushed_listed_acked_by_an_admin_only_and_leaves_the_list_once_cleared() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body(&addr.to_string())))
        .await
        .unwrap();
    let mut admin = connect(&gw, "admin").await;
    let mut viewer = connect(&gw, "viewer").await;
    // The viewer only wants emergencies of the threshold kind.
    let r = call(&mut viewer, "subscribe", json!({"eventTypes": ["threshold_exceeded", "threshold_cleared"], "minPriority": "emergency", "telemetry": false})).await;
    assert_eq!(r["code"], 0);
    wait_for("online", || online(&gw, "boiler")).await;

    sim.with_memory(BOILER, |m| m.holding[2] = 950);
    let e = next_event(&mut admin, "threshold_exceeded").await;
    assert_eq!(
        (
            e["deviceId"].as_str(),
            e["pointId"].as_str(),
            e["priority"].as_str()
        ),
        (Some("boiler"), Some("setpoint"), Some("emergency"))
    );
    assert_eq!(
        (e["state"].as_str(), e["value"].as_f64()),
        (Some("active"), Some(95.0))
    );
    assert!(e["ts"].as_str().unwrap().ends_with('Z') && e["deviceSeq"].as_u64().unwrap() >= 1);
    let seen_by_viewer = next_event(&mut viewer, "threshold_exceeded").await;
    assert_eq!(seen_by_viewer["id"], e["id"]);
    // Pushed after commit: it is already in the store.
    let r = call(
        &mut admin,
        "events.query",
        json!({"type": "threshold_exceeded"}),
    )
    .await;
    assert_eq!(r["data"]["events"][0]["id"], e["id"]);

    let r = call(&mut admin, "alarms.active", json!({})).await;
    let alarms = r["data"]["alarms"].as_array().unwrap();
    assert_eq!(alarms[0]["id"], e["id"], "emergency first");
    assert_eq!(
        call(&mut viewer, "alarms.ack", json!({"eventId": e["id"]})).await["code"],
        403
    );
    assert_eq!(
        call(
            &mut admin,
            "alarms.ack",
            json!({"eventId": "test-gw-999999"})
        )
        .await["code"],
        404
    );
    let r = call(&mut admin, "alarms.ack", json!({"eventId": e["id"]})).await;
    assert_eq!(
        (r["code"].as_u64(), r["data"]["ackedBy"].as_str()),
        (Some(0), Some("admin"))
    );
    // Acked but still active: still listed, with who acked.
    let r = call(&mut viewer, "alarms.active", json!({})).await;
    let listed = r["data"]["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == e["id"])
        .cloned()
        .unwrap();
    assert_eq!(
        (listed["state"].as_str(), listed["ackedBy"].as_str()),
        (Some("active"), Some("admin"))
    );

    sim.with_memory(BOILER, |m| m.holding[2] = 800);
    let c = next_event(&mut viewer, "threshold_cleared").await;
    assert_eq!(c["state"], "cleared");
    assert!(c["deviceSeq"].as_u64() > e["deviceSeq"].as_u64());
    let r = call(&mut admin, "alarms.active", json!({})).await;
    assert!(
        r["data"]["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["id"] != e["id"]),
        "cleared and acked: gone"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_query_filters_and_pages_newest_first() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body(&addr.to_string())))
        .await
        .unwrap();
    let mut s = connect(&gw, "viewer").await;
    wait_for("online", || online(&gw, "boiler")).await;
    for _ in 0..3 {
        sim.with_memory(BOILER, |m| m.holding[2] = 950);
        next_event(&mut s, "threshold_exceeded").await;
        sim.with_memory(BOILER, |m| m.holding[2] = 800);
        next_event(&mut s, "threshold_cleared").await;
    }
    let r = call(
        &mut s,
        "events.query",
        json!({"deviceId": "boiler", "limit": 4}),
    )
    .await;
    let page1 = r["data"]["events"].as_array().unwrap().clone();
    assert_eq!(page1.len(), 4);
    let seqs: Vec<u64> = page1
        .iter()
        .map(|e| e["deviceSeq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let r = call(
        &mut s,
        "events.query",
        json!({"deviceId": "boiler", "limit": 4, "before": r["data"]["next"]}),
    )
    .await;
    let page2 = r["data"]["events"].as_array().unwrap();
    assert!(page2[0]["deviceSeq"].as_u64().unwrap() < *seqs.last().unwrap());
    let r = call(&mut s, "events.query", json!({"type": "threshold_cleared"})).await;
    assert_eq!(r["data"]["events"].as_array().unwrap().len(), 3);
    let r = call(&mut s, "events.query", json!({"minPriority": "emergency"})).await;
    assert!(r["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["priority"] == "emergency"));
    assert_eq!(
        call(&mut s, "events.query", json!({"limit": 1001})).await["code"],
        400
    );
    assert_eq!(
        call(&mut s, "events.query", json!({"type": "boom"})).await["code"],
        400
    );
    assert_eq!(
        call(&mut s, "events.query", json!({"deviceId": "nope"})).await["code"],
        404
    );
    gw.shutdown().await;
}

/// SPEC `alarms.ack` by `deviceId` (and `eventIds`) with a `comment`: each acknowledgement is
/// an `info` event with who and comment in the log; `device.write` replies with what the device
/// holds (`readBack`); `system.diagnostics` for any role, addresses for admins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn alarms_are_acked_together_with_a_comment_each_ack_logged_and_writes_read_back() {
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let always = "[[rules]]\nid = \"warm\"\ndevice = \"boiler\"\npoint = \"temperature\"\nkind = \"above\"\nthreshold = -1000.0\n";
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{always}", body(&addr.to_string())),
    ))
    .await
    .unwrap();
    let mut admin = connect(&gw, "admin").await;
    wait_for("online", || online(&gw, "boiler")).await;

    let r = call(
        &mut admin,
        "device.write",
        json!({"deviceId": "boiler", "pointId": "setpoint", "value": 95.5}),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["data"]["readBack"].as_f64(), Some(95.5), "{r}");

    let mut alarms = Vec::new();
    for _ in 0..300 {
        let r = call(&mut admin, "alarms.active", json!({})).await;
        alarms = r["data"]["alarms"].as_array().unwrap().clone();
        if alarms.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alarms.len(), 2, "{alarms:#?}");
    // Cleared but not acknowledged, then raised again: the same row, counted twice, with the
    // time it was first raised.
    let first =
        alarms.iter().find(|a| a["pointId"] == "setpoint").unwrap()["firstRaisedAt"].clone();
    for value in [80.0, 95.5] {
        let want = if value > 90.0 {
            "threshold_exceeded"
        } else {
            "threshold_cleared"
        };
        // The event may be pushed before the write's reply (its read-back raised it).
        let (r, _) = call_seeing(
            &mut admin,
            "device.write",
            json!({"deviceId": "boiler", "pointId": "setpoint", "value": value}),
            |e| is_event(e, want) && e["data"]["pointId"] == "setpoint",
        )
        .await;
        assert_eq!(r["code"], 0, "{r}");
    }
    gw.settle().await;
    let r = call(&mut admin, "alarms.active", json!({})).await;
    alarms = r["data"]["alarms"].as_array().unwrap().clone();
    assert_eq!(alarms.len(), 2, "still one row per alarm: {alarms:#?}");
    let again = alarms.iter().find(|a| a["pointId"] == "setpoint").unwrap();
    assert_eq!(
        (again["occurrences"].as_u64(), &again["firstRaisedAt"]),
        (Some(2), &first),
        "{again}"
    );
    for (params, code) in [
        (json!({"eventIds": ["test-gw-999999"]}), 404),
        (json!({}), 400),
        (json!({"deviceId": "nope"}), 404),
    ] {
        assert_eq!(
            call(&mut admin, "alarms.ack", params.clone()).await["code"],
            code,
            "{params}"
        );
    }
    // One id given 50 times is one acknowledgement (#31, item 6), and given again, none.
    let id = alarms[0]["id"].clone();
    for want in [json!([id.clone()]), json!([])] {
        let r = call(
            &mut admin,
            "alarms.ack",
            json!({"eventIds": vec![id.clone(); 50]}),
        )
        .await;
        assert_eq!(r["data"]["acked"], want, "{r}");
    }
    let r = call(
        &mut admin,
        "alarms.ack",
        json!({"deviceId": "boiler", "comment": "checked on site"}),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["data"]["acked"].as_array().map(Vec::len), Some(1), "{r}");
    // Both again: nothing left to acknowledge, and that is not an error.
    let r = call(&mut admin, "alarms.ack", json!({"deviceId": "boiler"})).await;
    assert_eq!(r["data"]["acked"], json!([]), "{r}");

    gw.settle().await;
    let r = call(&mut admin, "events.query", json!({"deviceId": "boiler"})).await;
    let acks: Vec<&Json> = r["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "info" && e["type"] == "threshold_exceeded")
        .collect();
    assert_eq!(acks.len(), 2, "{r}");
    for e in &acks {
        let m = e["message"].as_str().unwrap();
        assert!(m.starts_with("acknowledged by admin"), "{m}");
        assert_eq!(e["priority"], "normal");
    }
    assert!(
        acks.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .starts_with("acknowledged by admin: checked on site (alarm ")),
        "{r}"
    );

    // The writes in the audit, newest first, a page at a time.
    let r = call(&mut admin, "audit.query", json!({"limit": 2})).await;
    let page = r["data"]["entries"].as_array().unwrap().clone();
    let change = |e: &Json| (e["old"].as_f64(), e["value"].as_f64(), e["result"].clone());
    assert_eq!(
        change(&page[0]),
        (Some(80.0), Some(95.5), json!("ok")),
        "{r}"
    );
    assert_eq!(
        change(&page[1]),
        (Some(95.5), Some(80.0), json!("ok")),
        "{r}"
    );
    assert_eq!(
        (
            page[0]["user"].as_str(),
            page[0]["source"].as_str(),
            page[0]["pointId"].as_str()
        ),
        (Some("admin"), Some("ws"), Some("setpoint"))
    );
    let r = call(
        &mut admin,
        "audit.query",
        json!({"limit": 2, "before": r["data"]["next"]}),
    )
    .await;
    let older = r["data"]["entries"].as_array().unwrap();
    assert_eq!(older.len(), 1, "the first write: {r}");
    assert_eq!(older[0]["value"].as_f64(), Some(95.5));
    assert_eq!(r["data"]["next"], Json::Null);

    let mut viewer = connect(&gw, "viewer").await;
    assert_eq!(
        call(&mut viewer, "audit.query", json!({})).await["code"],
        403
    );
    let r = call(&mut viewer, "system.diagnostics", json!({})).await;
    assert_eq!(r["code"], 0, "{r}");
    let d = &r["data"];
    assert_eq!(
        (
            d["buses"][0]["name"].as_str(),
            d["buses"][0]["link"].as_str()
        ),
        (Some("b"), Some("up")),
        "{d}"
    );
    assert!(
        d["buses"][0].get("at").is_none(),
        "viewers get no addresses: {d}"
    );
    let boiler = &d["devices"][0];
    assert!(
        boiler["lastGoodRead"].is_string() && boiler["requests"]["ok"].as_u64() > Some(0),
        "{d}"
    );
    assert!(
        d["gateway"]["version"].is_string() && d["store"]["capBytes"].as_u64() > Some(0),
        "{d}"
    );
    let r = call(&mut admin, "system.diagnostics", json!({})).await;
    assert_eq!(r["data"]["buses"][0]["at"], addr.to_string());
    gw.shutdown().await;
}

/// ISA-18.2 shelving: an admin shelves an alarm (listed apart, with who and until when; an
/// `info` event), a viewer may not; a device's alarms shelved and taken back; a shelving that
/// ends brings the alarm back by itself; a bad duration is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn an_alarm_shelved_is_listed_apart_until_it_comes_back_by_itself() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body(&addr.to_string())))
        .await
        .unwrap();
    let mut admin = connect(&gw, "admin").await;
    let mut viewer = connect(&gw, "viewer").await;
    wait_for("online", || online(&gw, "boiler")).await;
    sim.with_memory(BOILER, |m| m.holding[2] = 950);
    let e = next_event(&mut admin, "threshold_exceeded").await;

    assert_eq!(
        call(
            &mut viewer,
            "alarms.shelve",
            json!({"eventId": e["id"], "durationS": 60})
        )
        .await["code"],
        403
    );
    for bad in [0, 28_801] {
        let r = call(
            &mut admin,
            "alarms.shelve",
            json!({"eventId": e["id"], "durationS": bad}),
        )
        .await;
        assert_eq!(r["code"], 400, "{bad}: {r}");
    }
    // Its `info` event may be pushed before the reply.
    let (r, info) = call_seeing(
        &mut admin,
        "alarms.shelve",
        json!({"eventId": e["id"], "durationS": 2, "comment": "burner maintenance"}),
        |m| is_event(m, "alarm_shelved"),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["data"]["shelvedBy"], "admin");
    let info = &info["data"];
    assert_eq!(
        (info["state"].as_str(), info["deviceId"].as_str()),
        (Some("info"), Some("boiler"))
    );
    assert!(
        info["message"]
            .as_str()
            .unwrap()
            .contains("burner maintenance"),
        "{info}"
    );
    let r = call(&mut viewer, "alarms.active", json!({})).await;
    assert!(
        r["data"]["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["id"] != e["id"]),
        "{r}"
    );
    let shelved = &r["data"]["shelved"][0];
    assert_eq!(shelved["id"], e["id"], "{r}");
    assert_eq!(shelved["shelvedBy"], "admin");
    assert!(shelved["shelvedUntil"].as_str().unwrap().ends_with('Z'));
    assert_eq!(shelved["shelvedAs"], json!({"eventId": e["id"]}));

    // Its end: back by itself, said so.
    let back = next_event(&mut admin, "alarm_unshelved").await;
    assert!(
        back["message"]
            .as_str()
            .unwrap()
            .contains("back from the shelf"),
        "{back}"
    );
    let r = call(&mut admin, "alarms.active", json!({})).await;
    assert!(
        r["data"]["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == e["id"]),
        "{r}"
    );
    assert_eq!(r["data"]["shelved"], json!([]));

    // A whole device for a while, then taken back by hand.
    let r = call(
        &mut admin,
        "alarms.shelve",
        json!({"deviceId": "boiler", "durationS": 3600}),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    let r = call(&mut admin, "alarms.active", json!({})).await;
    assert_eq!(
        r["data"]["shelved"][0]["shelvedAs"],
        json!({"deviceId": "boiler"}),
        "{r}"
    );
    let (r, _) = call_seeing(
        &mut admin,
        "alarms.unshelve",
        json!({"deviceId": "boiler"}),
        |m| is_event(m, "alarm_unshelved"),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    let r = call(&mut admin, "alarms.unshelve", json!({"deviceId": "boiler"})).await;
    assert_eq!(r["code"], 404, "not shelved any more: {r}");
    let r = call(
        &mut admin,
        "alarms.shelve",
        json!({"deviceId": "nope", "durationS": 60}),
    )
    .await;
    assert_eq!(r["code"], 404, "{r}");
    gw.shutdown().await;
}
