//! Notifications against receivers we did not write or that misbehave: e-mail through aiosmtpd
//! with STARTTLS and AUTH (a CA made for the test); a webhook that hangs, one that fails, one
//! that redirects to itself and an SMTP server that hangs up mid-DATA, each attempt bounded
//! and counted while polling goes on; and an acknowledgement from the central site over MQTT.

mod common;

use std::time::Duration;

use common::hook::{metric, smtp_closing_mid_data, Hook, Mode, BOILER_C, SETPOINT_HIGH};
use common::mqtt::{broker, Watcher};
use common::tls::make_test_ca;
use common::ws::*;
use common::*;
use edge_gateway::modbus::simulator::{Profile, BOILER};
use edge_gateway::Gateway;
use serde_json::{json, Value as Json};

fn users() -> String {
    let admin = edge_gateway::cli::hash_password("admin").unwrap();
    format!("[[users]]\nname = \"admin\"\nrole = \"admin\"\npassword_hash = \"{admin}\"\n")
}

/// aiosmtpd with STARTTLS required, AUTH only after it; each message it took, as parsed by
/// Python's e-mail package, in `out`.
fn smtp_server(python: &str, dir: &std::path::Path, port: u16) -> Child {
    use std::io::BufRead;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/smtp_server.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .arg(dir.join("mail.jsonl"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let child = Child(child);
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.starts_with("serving smtp"))),
        "aiosmtpd did not start"
    );
    child
}

fn mails(dir: &std::path::Path) -> Vec<Json> {
    std::fs::read_to_string(dir.join("mail.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The decoded header of a raw message.
fn header(raw: &str, name: &str) -> String {
    let python = std::env::var("EDGE_PYMODBUS_PYTHON").unwrap();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, email, email.policy; m = email.message_from_string(sys.stdin.read(), policy=email.policy.default); print(m[sys.argv[1]] or '')",
            name,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(raw.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_goes_through_aiosmtpd_over_starttls_with_auth_and_reads_well() {
    let Ok(python) = std::env::var("EDGE_PYMODBUS_PYTHON") else {
        skipped("EDGE_PYMODBUS_PYTHON is not set (./scripts/test installs aiosmtpd in .venv)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    if !make_test_ca(dir.path()) {
        skipped("openssl could not make a test CA");
        return;
    }
    let port = free_port();
    let _smtp = smtp_server(&python, dir.path(), port);
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    std::fs::write(dir.path().join("smtp-password"), "mail-pw\n").unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"mail-gw\"\ndata_dir = {data:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{}{}{BOILER_C}{SETPOINT_HIGH}
[[notifiers]]
name = \"shift\"
kind = \"email\"
smtp = \"smtp://localhost:{port}\"
username = \"edge\"
password_file = {pw:?}
from = \"Boiler house <gateway@plant.local>\"
to = [\"shift@plant.local\"]
",
            users(),
            tcp_bus(&addr.to_string()),
            data = dir.path().join("data").display().to_string(),
            pw = dir.path().join("smtp-password").display().to_string(),
        ),
    )
    .unwrap();
    let mut cmd = gateway_command(&cfg);
    // The test CA is the only one trusted: the certificate is checked, not waved through.
    cmd.env("SSL_CERT_FILE", dir.path().join("ca.pem"));
    let (_gw, _http) = spawn_gateway(cmd, None);
    sim.with_memory(BOILER, |m| m.holding[2] = 952);
    wait_for("the alarm's e-mail", || !mails(dir.path()).is_empty()).await;
    let mail = &mails(dir.path())[0];
    assert_eq!(mail["tls"], true, "{mail}");
    assert_eq!(mail["auth"], true, "{mail}");
    assert_eq!(mail["to"], json!(["shift@plant.local"]));
    let raw = mail["data"].as_str().unwrap();
    assert_eq!(
        header(raw, "Subject"),
        "[EMERGENCY] boiler setpoint 95.2 °C > 90"
    );
    let id = header(raw, "Message-ID");
    assert!(
        id.starts_with("<mail-gw-") && id.ends_with("@mail-gw.edge-gateway>"),
        "{id}"
    );
    for line in [
        "Gateway   mail-gw",
        "Device    boiler",
        "Point     setpoint",
        "Value     95.2",
        "Open the dashboard: http://127.0.0.1:",
    ] {
        assert!(raw.contains(line), "{line} in {raw}");
    }
    sim.with_memory(BOILER, |m| m.holding[2] = 800);
    wait_for("the clear's e-mail", || mails(dir.path()).len() >= 2).await;
    let raw = mails(dir.path())[1]["data"].as_str().unwrap().to_string();
    assert!(
        header(&raw, "Subject")
            .starts_with("[EMERGENCY cleared] boiler setpoint 80.0 °C (back from > 90)"),
        "{}",
        header(&raw, "Subject")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_cost_a_bounded_attempt_each_counted_and_polling_goes_on() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let (hang, fail, redirect) = (
        Hook::start("k").await,
        Hook::start("k").await,
        Hook::start("k").await,
    );
    hang.set(Mode::Hang);
    fail.set(Mode::Fail);
    redirect.set(Mode::Redirect);
    let (smtp, cut) = smtp_closing_mid_data().await;
    let dir = tempfile::tempdir().unwrap();
    let notifiers = format!(
        "[[notifiers]]\nname = \"hang\"\nkind = \"webhook\"\nurl = \"{}\"\n\
         [[notifiers]]\nname = \"fail\"\nkind = \"webhook\"\nurl = \"{}\"\n\
         [[notifiers]]\nname = \"redirect\"\nkind = \"webhook\"\nurl = \"{}\"\n\
         [[notifiers]]\nname = \"mail\"\nkind = \"email\"\nsmtp = \"smtp://127.0.0.1:{smtp}\"\nstarttls = false\nfrom = \"gw@plant.local\"\nto = [\"x@plant.local\"]\n",
        hang.url("/h"),
        fail.url("/f"),
        redirect.url("/r"),
    );
    let gw = Gateway::start(config(
        dir.path(),
        &format!(
            "{}{}{BOILER_C}{SETPOINT_HIGH}{notifiers}",
            users(),
            tcp_bus(&addr.to_string())
        ),
    ))
    .await
    .unwrap();
    let mut admin = connect(&gw, "admin").await;
    wait_for("online", || online(&gw, "boiler")).await;
    sim.with_memory(BOILER, |m| m.holding[2] = 952);
    let polls_before = requests(&gw, "boiler", "ok");
    for name in ["fail", "redirect", "mail", "hang"] {
        let key = format!("edge_notifications_total{{notifier=\"{name}\",result=\"failed\"}}");
        wait_for_async(&format!("{name}'s attempt counted as failed"), || async {
            metric(&http_get(gw.http_addr, "/metrics").await, &key) >= 1.0
        })
        .await;
    }
    assert!(
        *cut.lock().unwrap() >= 1,
        "the SMTP server hung up mid-DATA"
    );
    assert!(online(&gw, "boiler"));
    assert!(
        requests(&gw, "boiler", "ok") > polls_before + 20,
        "polling went on while the receivers misbehaved"
    );
    let d = call(&mut admin, "system.diagnostics", json!({})).await;
    let error_of = |name: &str| {
        d["data"]["notifiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| n["lastError"].as_str().unwrap_or_default().to_string())
            .unwrap()
    };
    assert!(error_of("hang").contains("no answer within 10 s"), "{d}");
    assert!(error_of("fail").contains("500"), "{d}");
    assert!(
        error_of("redirect").contains("redirects are not followed"),
        "{d}"
    );
    assert!(!error_of("mail").is_empty(), "{d}");
    // Nothing was taken, so nothing left the queue.
    let m = http_get(gw.http_addr, "/metrics").await;
    assert_eq!(
        metric(&m, "edge_notifier_backlog{notifier=\"fail\"}"),
        1.0,
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_central_site_acknowledges_an_alarm_over_mqtt_as_mqtt_by() {
    let Some(broker) = broker() else { return };
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let id = unique_id("ack");
    let mut w = Watcher::start(&broker, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config_id(
        &id,
        dir.path(),
        &format!(
            "{}[mqtt]\nurl = \"mqtt://{broker}\"\nqos = 1\nallow_writes = true\n{}{BOILER_C}{SETPOINT_HIGH}",
            users(),
            tcp_bus(&addr.to_string())
        ),
    ))
    .await
    .unwrap();
    let mut admin = connect(&gw, "admin").await;
    w.next("/status", |b| b["online"] == true).await;
    sim.with_memory(BOILER, |m| m.holding[2] = 952);
    let (_, alarm, _) = w.next("/events", |b| b["state"] == "active").await;
    let event_id = alarm["id"].as_str().unwrap().to_string();
    let topic = format!("edge/{id}/alarms/ack");
    let client = w.client.clone();
    let publish = |payload: Json| {
        let c = client.clone();
        let topic = topic.clone();
        async move {
            c.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_string())
                .await
                .unwrap();
        }
    };
    // A bad request gets its answer and the session lives on.
    publish(json!({"eventIds": [event_id], "requestId": "r1"})).await;
    let (_, r, _) = w
        .next("/alarms/ack/result", |b| b["requestId"] == "r1")
        .await;
    assert_eq!(r["code"], 400, "{r}");
    publish(json!({"eventIds": [event_id], "by": "central", "comment": "seen in the control room", "requestId": "r2"})).await;
    let (_, r, _) = w
        .next("/alarms/ack/result", |b| b["requestId"] == "r2")
        .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["acked"], json!([event_id]));
    assert_eq!(r["ackedBy"], "mqtt:central");
    let a = call(&mut admin, "alarms.active", json!({})).await;
    assert_eq!(a["data"]["alarms"][0]["ackedBy"], "mqtt:central", "{a}");
    // Recorded as a dashboard acknowledgement is: an info event naming who and why.
    let (_, info, _) = w
        .next("/events", |b| {
            b["state"] == "info" && b["ackedBy"] == "mqtt:central"
        })
        .await;
    assert!(
        info["message"]
            .as_str()
            .unwrap()
            .contains("seen in the control room"),
        "{info}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.shutdown().await;
    common::mqtt::clear_retained(&mut w, &id).await;
}
