//! Alarm notifications by webhook against a receiver that checks each signature: the alarm,
//! reminders until acknowledged, the escalation, the clear, `notify.test`; a storm as one
//! digest; a shelved alarm not sent; an outage across a restart delivered exactly once by id.

mod common;

use std::time::Duration;

use common::hook::{metric, Hook, Mode, BOILER_C, SETPOINT_HIGH};
use common::ws::*;
use common::*;
use edge_gateway::modbus::simulator::{Profile, BOILER};
use edge_gateway::Gateway;
use serde_json::json;

const SECRET: &str = "hook-secret";

/// Users, the boiler with a setpoint in °C, and `rules` and `notifiers` after them.
fn body(addr: &str, rules: &str, notifiers: &str) -> String {
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
{}{BOILER_C}{rules}
{notifiers}
"#,
        tcp_bus(addr)
    )
}

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!("[[notifiers]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n")
}

async fn metrics(gw: &Gateway) -> String {
    http_get(gw.http_addr, "/metrics").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn an_alarm_is_posted_signed_reminded_until_acked_escalated_and_its_clear_sent() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let hook = Hook::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let notifiers = webhook(
        "ops",
        &hook.url("/ops"),
        "min_priority = \"high\"\nrepeat_unacked_s = 1\nescalate_after_s = 2\nescalate_to = \"boss\"",
    ) + &webhook("boss", &hook.url("/boss"), "min_priority = \"emergency\"\ndevices = [\"b\"]");
    let gw = Gateway::start(config(
        dir.path(),
        &body(&addr.to_string(), SETPOINT_HIGH, &notifiers),
    ))
    .await
    .unwrap();
    let mut admin = connect(&gw, "admin").await;
    let mut viewer = connect(&gw, "viewer").await;
    wait_for("online", || online(&gw, "boiler")).await;

    // notify.test: admins only, a known notifier, the outcome said.
    let r = call(&mut viewer, "notify.test", json!({"notifier": "ops"})).await;
    assert_eq!(r["code"], 403, "{r}");
    let r = call(&mut admin, "notify.test", json!({"notifier": "nope"})).await;
    assert_eq!(r["code"], 404, "{r}");
    let r = call(&mut admin, "notify.test", json!({"notifier": "ops"})).await;
    assert_eq!(r["data"]["ok"], true, "{r}");
    let t = hook
        .wait("/ops", "test", |g| g.body["notification"] == "test")
        .await;
    assert!(t.signed, "{t:?}");
    assert_eq!(t.body["by"], "admin");

    sim.with_memory(BOILER, |m| m.holding[2] = 952);
    let raised = hook
        .wait("/ops", "the alarm", |g| g.body["notification"] == "alarm")
        .await;
    let id = raised.body["id"].as_str().unwrap().to_string();
    assert_eq!(raised.id, id, "X-Edge-Event-Id is the event id");
    assert!(raised.signed, "{raised:?}");
    assert_eq!(raised.body["gatewayId"], "test-gw");
    assert_eq!(raised.body["state"], "active");
    assert_eq!(raised.body["priority"], "emergency");
    assert_eq!(raised.body["pointId"], "setpoint");
    assert!(
        raised.body["dashboardUrl"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{raised:?}"
    );
    let reminder = hook
        .wait("/ops", "a reminder", |g| g.id == format!("{id}-reminder-1"))
        .await;
    assert_eq!(reminder.body["notification"], "reminder");
    let escalated = hook
        .wait("/boss", "the escalation", |g| {
            g.id == format!("{id}-escalation")
        })
        .await;
    assert!(escalated.signed);
    assert_eq!(escalated.body["id"], id.as_str());

    let r = call(&mut admin, "alarms.ack", json!({"eventId": id})).await;
    assert_eq!(r["code"], 0, "{r}");
    // A reminder on its way as the ack landed may still arrive; after that, none.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reminders = |h: &Hook| {
        h.on("/ops")
            .iter()
            .filter(|g| g.id.contains("-reminder-"))
            .count()
    };
    let settled = reminders(&hook);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(reminders(&hook), settled, "no reminder once acknowledged");
    assert_eq!(hook.on("/boss").len(), 1, "one escalation");

    sim.with_memory(BOILER, |m| m.holding[2] = 800);
    let cleared = hook
        .wait("/ops", "the clear", |g| g.body["state"] == "cleared")
        .await;
    assert_eq!(cleared.id, cleared.body["id"].as_str().unwrap());
    assert_eq!(cleared.body["priority"], "emergency");

    // Each message once, each signed.
    let got = hook.on("/ops");
    let mut ids: Vec<_> = got.iter().map(|g| g.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "{got:#?}");
    assert!(got.iter().all(|g| g.signed));
    // The receiver has the clear before the gateway has read its answer, and counts it.
    let (sent, gw_ref) = (got.len(), &gw);
    wait_for_async("every delivery counted", || async move {
        let m = metrics(gw_ref).await;
        let ok = metric(
            &m,
            "edge_notifications_total{notifier=\"ops\",result=\"ok\"}",
        );
        ok as usize == sent
    })
    .await;
    let m = metrics(&gw).await;
    let ok = metric(
        &m,
        "edge_notifications_total{notifier=\"ops\",result=\"ok\"}",
    );
    assert_eq!(ok as usize, got.len(), "{m}");
    assert_eq!(
        metric(&m, "edge_notifier_backlog{notifier=\"boss\"}"),
        0.0,
        "{m}"
    );
    let d = call(&mut viewer, "system.diagnostics", json!({})).await;
    let ops = &d["data"]["notifiers"][0];
    assert_eq!(
        (ops["name"].as_str(), ops["kind"].as_str()),
        (Some("ops"), Some("webhook")),
        "{d}"
    );
    assert!(ops["lastSuccess"].is_string(), "{d}");
    assert!(
        ops.get("lastError").is_none(),
        "error texts are for admins: {d}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_goes_as_one_digest_and_a_shelved_alarm_is_not_sent() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let hook = Hook::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    // Twenty rules on one point, all passed by the first poll.
    let rules = (1..=20).fold(String::new(), |mut s, i| {
        use std::fmt::Write as _;
        let _ = write!(
            s,
            "[[rules]]\nid = \"low-{i}\"\ndevice = \"boiler\"\npoint = \"setpoint\"\nkind = \"above\"\nthreshold = {}.0\nclear = 1.0\npriority = \"high\"\n",
            3 * i
        );
        s
    }) + SETPOINT_HIGH
        + "[events]\nmax_per_device_per_s = 100\n";
    let notifiers = webhook("ops", &hook.url("/ops"), "");
    let gw = Gateway::start(config(
        dir.path(),
        &body(&addr.to_string(), &rules, &notifiers),
    ))
    .await
    .unwrap();
    let mut admin = connect(&gw, "admin").await;
    // Each alarm in exactly one message: a few alone, the rest in a digest.
    let covered = |h: &Hook| -> Vec<String> {
        h.on("/ops")
            .iter()
            .flat_map(|g| match g.body["events"].as_array() {
                Some(events) => events
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_string())
                    .collect(),
                None => vec![g.id.clone()],
            })
            .collect()
    };
    wait_for("20 alarms sent", || covered(&hook).len() >= 20).await;
    let mut ids = covered(&hook);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "{:#?}", hook.on("/ops"));
    let got = hook.on("/ops");
    assert!(
        got.len() <= edge_gateway::notify::STORM_PER_MIN + 1,
        "a storm is a few messages, not one per alarm: {}",
        got.len()
    );
    let digest = got
        .iter()
        .find(|g| g.body["notification"] == "digest")
        .expect("a digest");
    assert!(digest.signed);
    assert!(digest.id.starts_with("test-gw-digest-"), "{}", digest.id);
    let events = digest.body["events"].as_array().unwrap();
    assert_eq!(digest.body["count"], events.len());
    assert!(events
        .iter()
        .all(|e| e["state"] == "active" && e["priority"] == "high"));

    // Shelved: the device's alarms are not sent, and counted as such.
    let r = call(
        &mut admin,
        "alarms.shelve",
        json!({"deviceId": "boiler", "durationS": 600, "comment": "burner service"}),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    sim.with_memory(BOILER, |m| m.holding[2] = 950);
    wait_for_async("the shelved alarm counted", || async {
        metric(
            &metrics(&gw).await,
            "edge_notifications_total{notifier=\"ops\",result=\"shelved\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(covered(&hook).len(), 20, "{:#?}", hook.on("/ops"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_across_a_restart_is_delivered_exactly_once_by_id() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let hook = Hook::start(SECRET).await;
    hook.set(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    let text = format!(
        "[gateway]\nid = \"restart-gw\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{}",
        dir.path().join("data").display().to_string(),
        body(
            &addr.to_string(),
            SETPOINT_HIGH,
            &webhook("ops", &hook.url("/ops"), "")
        )
    );
    std::fs::write(&cfg, text).unwrap();
    let (mut first, _) = spawn_gateway(gateway_command(&cfg), None);
    sim.with_memory(BOILER, |m| m.holding[2] = 955);
    let failed = hook
        .wait("/ops", "a failed attempt", |g| g.answered == 500)
        .await;
    let id = failed.id.clone();
    // A clean stop with the alarm undelivered.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &first.0.id().to_string()])
        .status();
    let _ = first.0.wait();
    hook.set(Mode::Ok);
    let (_second, http) = spawn_gateway(gateway_command(&cfg), None);
    let done = hook
        .wait("/ops", "the delivery after the restart", |g| {
            g.answered == 200
        })
        .await;
    assert_eq!(done.id, id);
    assert_eq!(done.body["state"], "active");
    // Nothing more comes: the alarm was not raised again by the restart, nor sent twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered: Vec<_> = hook
        .on("/ops")
        .into_iter()
        .filter(|g| g.answered == 200)
        .collect();
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    let m = http_get(http, "/metrics").await;
    assert_eq!(
        metric(&m, "edge_notifier_backlog{notifier=\"ops\"}"),
        0.0,
        "{m}"
    );
}
