//! Live reload: a new config is applied as a difference. An unchanged bus keeps its open link
//! and its devices' live state; changed, added and removed buses are started and stopped; users
//! change and logged-in sessions carry over.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;

use common::*;
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::model::Quality;
use edge_gateway::{Gateway, ReloadSummary};

fn bus(name: &str, addr: &str, timeout_ms: u64) -> String {
    format!("[[buses]]\nname = \"{name}\"\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout_ms = {timeout_ms}\nretries = 0\n")
}

fn device(id: &str, bus: &str, unit: u8, point: &str) -> String {
    format!(
        "[[devices]]\nid = \"{id}\"\nbus = \"{bus}\"\nunit = {unit}\npoll_interval_ms = 100\n\
         points = [{{ id = \"v\", table = \"{point}\", address = 0, type = \"u16\" }}]\n"
    )
}

fn user(name: &str, role: &str, pw: &str) -> String {
    let hash = edge_gateway::cli::hash_password(pw).unwrap();
    format!("[[users]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_hash = \"{hash}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_reload_keeps_unchanged_buses_running_and_applies_the_rest() {
    let (_sim, sim, _c) = start_sim(Profile::Demo).await;
    let (relay_a, relay_b) = (Relay::start(sim).await, Relay::start(sim).await);
    let (a, b, s) = (
        relay_a.addr.to_string(),
        relay_b.addr.to_string(),
        sim.to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    // One hash for both configs: a new hash is a new password, which ends the session.
    let admin = user("admin", "admin", "admin");
    let v1 = format!(
        "{}{}{}{}{}{}{}",
        admin,
        bus("a", &a, 200),
        bus("b", &b, 200),
        bus("d", &s, 200),
        device("boiler", "a", 1, "holding"),
        device("pump", "b", 2, "holding"),
        device("meter", "d", 3, "input"),
    );
    let gw = Gateway::start(config(dir.path(), &v1)).await.unwrap();
    wait_for("all polled", || {
        ["boiler", "pump", "meter"]
            .iter()
            .all(|d| quality(&gw, d, "v") == Quality::Good)
    })
    .await;
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (token, _) = gw.shared.auth.login(local, "admin", "admin").await.unwrap();
    assert_eq!(relay_a.accepted.load(Relaxed), 1);

    // Bus a unchanged but now second; b's timeout changed; d removed; c new (the meter moved
    // there); a new user.
    let v2 = format!(
        "{}{}{}{}{}{}{}{}",
        admin,
        user("tech", "viewer", "tech"),
        bus("b", &b, 300),
        bus("a", &a, 200),
        bus("c", &s, 200),
        device("pump", "b", 2, "holding"),
        device("boiler", "a", 1, "holding"),
        device("meter", "c", 3, "input"),
    );
    let boiler_ok = requests(&gw, "boiler", "ok");
    let (gw, summary) = gw.reload(config(dir.path(), &v2)).await.unwrap();
    assert_eq!(
        summary,
        ReloadSummary {
            kept: vec!["a".into()],
            restarted: vec!["b".into()],
            added: vec!["c".into()],
            removed: vec!["d".into()],
        }
    );
    // The kept bus: its state is there at once (not stale), on the same connection, polling on.
    assert_eq!(quality(&gw, "boiler", "v"), Quality::Good);
    assert!(online(&gw, "boiler"));
    assert!(boiler_ok > 0);
    wait_for("boiler polled after the reload", || {
        requests(&gw, "boiler", "ok") > 3
    })
    .await;
    assert_eq!(
        relay_a.accepted.load(Relaxed),
        1,
        "the unchanged bus kept its link"
    );
    // The changed bus reconnected; the moved device runs on its new bus.
    wait_for("pump and meter polled", || {
        quality(&gw, "pump", "v") == Quality::Good && quality(&gw, "meter", "v") == Quality::Good
    })
    .await;
    assert_eq!(
        relay_b.accepted.load(Relaxed),
        2,
        "the changed bus started afresh"
    );
    // Users swapped; the admin's session survived.
    let tech = gw.shared.auth.login(local, "tech", "tech").await;
    assert!(tech.is_ok(), "the new user logs in");
    assert!(
        gw.shared.auth.resume(&token).is_some(),
        "the session carried over"
    );

    // A device added to bus a (SPEC "Reload", #31 item 1): the bus keeps its link, the boiler
    // its state and polling; only the new device starts.
    let v3 = format!("{v2}{}", device("pump2", "a", 2, "holding"));
    let (gw, summary) = gw.reload(config(dir.path(), &v3)).await.unwrap();
    assert!(summary.kept.contains(&"a".to_string()), "{summary:?}");
    assert_eq!(quality(&gw, "boiler", "v"), Quality::Good);
    assert!(online(&gw, "boiler"));
    wait_for("the added device polled", || {
        quality(&gw, "pump2", "v") == Quality::Good
    })
    .await;
    assert_eq!(
        relay_a.accepted.load(Relaxed),
        1,
        "adding a device kept the bus's link"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_invalid_config_keeps_the_running_one_and_a_valid_one_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, sim) = spawn_simulator(&[]);
    let cfg = dir.path().join("g.toml");
    let head = format!(
        "[gateway]\nid = \"hup\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{}",
        dir.path().join("data").display().to_string(),
        bus("a", &format!("127.0.0.1:{sim}"), 200)
    );
    std::fs::write(
        &cfg,
        format!("{head}{}", device("boiler", "a", 1, "holding")),
    )
    .unwrap();
    // A reload keeps the listening socket while `http.listen` is unchanged, port 0 included.
    let (gw, addr) = spawn_gateway(gateway_command(&cfg), None);
    // Devices in /healthz; None while the listener is being rebuilt by a reload.
    let total = |addr| async move { healthz_json(addr).await?["devices"]["total"].as_u64() };
    wait_for_async("serving", || async { total(addr).await.is_some() }).await;
    assert_eq!(total(addr).await, Some(1));
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &gw.0.id().to_string()])
            .status()
            .unwrap()
    };
    // Invalid: refused, still serving the same config.
    std::fs::write(
        &cfg,
        format!("{head}[[devices]]\nid = \"x\"\nbus = \"nope\"\n"),
    )
    .unwrap();
    hup();
    // Not "nothing changed after a sleep": the refusal itself is counted.
    let reloads = |result: &'static str| async move {
        let line = format!("edge_config_reloads_total{{result=\"{result}\"}} ");
        let metrics = try_http_get(addr, "/metrics").await?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    wait_for_async("the reload refused", || async {
        reloads("refused").await == Some(1)
    })
    .await;
    assert_eq!(total(addr).await, Some(1));
    // Valid with one more device: applied.
    std::fs::write(
        &cfg,
        format!(
            "{head}{}{}",
            device("boiler", "a", 1, "holding"),
            device("pump", "a", 2, "holding")
        ),
    )
    .unwrap();
    hup();
    wait_for_async("the new device", || async { total(addr).await == Some(2) }).await;
    // The count goes on across the reload that applied (counted once the new gateway runs,
    // a moment after it first answers).
    wait_for_async("the reload applied", || async {
        reloads("applied").await == Some(1)
    })
    .await;
    assert_eq!(reloads("refused").await, Some(1));
}
