//! Remote config over the broker (SPEC "Fleet over the broker"), against a real Mosquitto and
//! gateway processes run as the daemon runs (`run --config`, whose file an apply rewrites):
//! `fleet apply` to one and to all, forgeries and replays refused, a trial rolled back when no
//! confirm comes, and a config that cuts the gateway off the broker undoing itself.

mod common;

use std::path::{Path, PathBuf};

use common::mqtt::*;
use common::*;
use edge_gateway::fleet::signed::{config_message, Signer};
use serde_json::{json, Value as Json};

/// A fleet's key pair on disk, and its `public_keys` line.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let (ok, line, err) = cli(&["fleet", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{err}");
    (key, line.trim().to_string())
}

/// The text every gateway of the test is sent: no `[gateway] id`, so each keeps its own. The
/// test's own topic prefix keeps other tests' gateways on the broker out of its `_all`.
fn shared_text(broker: &str, prefix: &str, keys: &str, poll_ms: u32) -> String {
    format!(
        "# one text for the line\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nurl = \"mqtt://{broker}\"\ntopic_prefix = \"{prefix}\"\n[fleet]\n{keys}\n{}{}",
        tcp_bus("127.0.0.1:1"),
        BOILER_AND_PUMP.replace("poll_interval_ms = 100", &format!("poll_interval_ms = {poll_ms}"))
    )
}

/// A gateway process running from a file of its own, under its own id (which is also its MQTT
/// client id: two tests' gateways of one id would take the broker session from each other).
struct Gw {
    cfg: PathBuf,
    _dir: tempfile::TempDir,
    _child: Child,
}

fn start(id: &str, broker: &str, prefix: &str, keys: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    let text = format!(
        "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n{}",
        dir.path().join("data").display().to_string(),
        shared_text(broker, prefix, keys, 100)
    );
    std::fs::write(&cfg, text).unwrap();
    let (child, _) = spawn_gateway(gateway_command(&cfg), None);
    Gw {
        cfg,
        _dir: dir,
        _child: child,
    }
}

impl Gw {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.cfg).unwrap()
    }

    /// Who the config history says applied version `v`.
    fn applied_by(&self, v: &Json) -> Json {
        let path = self
            ._dir
            .path()
            .join(format!("data/config-versions/{v}.json"));
        serde_json::from_slice::<Json>(&std::fs::read(&path).unwrap()).unwrap()["user"].clone()
    }
}

/// A `config/apply` signed by `by` (as `key_id`).
fn signed_apply(
    by: &Signer,
    key_id: &str,
    id: &str,
    target: &str,
    confirm_s: u64,
    text: &str,
) -> Json {
    let expires = edge_gateway::model::rfc3339(edge_gateway::model::now_ms() + 60_000);
    let sig = by.sign(&config_message(id, target, &expires, confirm_s, text));
    json!({"id": id, "target": target, "expires": expires, "confirmS": confirm_s,
        "text": text, "keyId": key_id, "sig": sig})
}

async fn send(w: &Watcher, topic: String, body: &Json) {
    w.client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string())
        .await
        .unwrap();
}

/// To one, to all (each keeping its id and data_dir), a text for another gateway and one with
/// a problem refused with the reason and the line; a forged and a replayed message refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::too_many_lines,
    reason = "one fleet's session, read top to bottom"
)]
async fn fleet_apply_reaches_one_or_all_and_refuses_forgeries_and_replays() {
    let Some(broker) = broker() else { return };
    let keys = tempfile::tempdir().unwrap();
    let (key, line) = keygen(keys.path(), "ops.key");
    let p = unique_id("fleet-apply");
    let mut w = Watcher::start_on(&broker, &format!("{p}/#")).await;
    let (ga, gb) = (
        start("a", &broker, &p, &line),
        start("b", &broker, &p, &line),
    );
    w.next("a/state", |_| true).await;
    w.next("b/state", |_| true).await;
    let url = format!("mqtt://{broker}");
    let file = keys.path().join("line.toml");
    let fleet = |more: &[&str]| {
        let mut args = vec!["fleet", "apply", "--broker", &url, "--prefix", &p];
        args.extend(["--key", key.to_str().unwrap()]);
        args.extend(more);
        args.push(file.to_str().unwrap());
        cli(&args)
    };

    // To one: applied, the file now the text with the gateway's own id and data_dir in it.
    std::fs::write(&file, shared_text(&broker, &p, &line, 200)).unwrap();
    let (ok, out, err) = fleet(&["--gateway", "a"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("a ") && out.contains("applied") && out.contains("version"),
        "{out}"
    );
    let text = ga.text();
    assert!(text.contains("poll_interval_ms = 200"), "{text}");
    assert!(
        text.contains("id = \"a\"") && text.contains("data_dir"),
        "{text}"
    );
    assert!(
        gb.text().contains("poll_interval_ms = 100"),
        "b was not a target"
    );

    // To all: one message, every gateway with a fresh state under the prefix answers.
    std::fs::write(&file, shared_text(&broker, &p, &line, 300)).unwrap();
    let (ok, out, err) = fleet(&["--all"]);
    assert!(ok, "{out}{err}");
    for g in ["a ", "b "] {
        let l = out
            .lines()
            .find(|l| l.starts_with(g))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(l.contains("applied"), "{out}");
    }
    assert!(
        ga.text().contains("poll_interval_ms = 300")
            && gb.text().contains("poll_interval_ms = 300")
    );

    // A text naming another gateway, and one with a problem: refused, nothing written.
    let before = ga.text();
    let other = format!(
        "[gateway]\nid = \"b\"\n{}",
        shared_text(&broker, &p, &line, 400)
    );
    std::fs::write(&file, other).unwrap();
    let (ok, out, _) = fleet(&["--gateway", "a"]);
    assert!(
        !ok && out.contains("refused") && out.contains("`b`"),
        "{out}"
    );
    let bad = shared_text(&broker, &p, &line, 400).replace("unit = 2", "unit = 900");
    let bad_line = bad.lines().position(|l| l == "unit = 900").unwrap() + 1;
    std::fs::write(&file, &bad).unwrap();
    let (ok, out, _) = fleet(&["--gateway", "a"]);
    assert!(!ok && out.contains("refused"), "{out}");
    assert!(
        out.contains(&format!("line {bad_line}:")),
        "the line as sent: {out}"
    );
    assert_eq!(ga.text(), before, "nothing written");

    // By hand: a forgery (another key under ours), then a good message twice.
    let signer = Signer::load(&key).unwrap();
    let (stranger, _) = keygen(keys.path(), "stranger.key");
    let stranger = Signer::load(&stranger).unwrap();
    let text = shared_text(&broker, &p, &line, 500);
    let topic = format!("{p}/a/config/apply");
    let forged = signed_apply(&stranger, &signer.key_id, "f1", "a", 0, &text);
    send(&w, topic.clone(), &forged).await;
    let (_, r, _) = w.next("a/config/result", |r| r["id"] == "f1").await;
    assert_eq!(r["result"], "refused", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("does not match"),
        "{r}"
    );
    let good = signed_apply(&signer, &signer.key_id, "g1", "a", 0, &text);
    send(&w, topic.clone(), &good).await;
    let (_, r, _) = w.next("a/config/result", |r| r["id"] == "g1").await;
    assert_eq!(r["result"], "applied", "{r}");
    assert!(ga.text().contains("poll_interval_ms = 500"));
    assert_eq!(
        ga.applied_by(&r["version"]),
        format!("fleet:{}", signer.key_id)
    );
    w.next("a/state", |s| s["config"]["version"] == r["version"])
        .await;
    send(&w, topic, &good).await;
    let (_, r, _) = w.next("a/config/result", |r| r["id"] == "g1").await;
    assert_eq!(r["result"], "refused", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("seen before"), "{r}");
    for id in ["a", "b"] {
        clear_retained_under(&w, &p, id).await;
    }
}

/// With `confirmS`: kept when confirmed in time (the CLI confirms), put back by itself when not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_config_rolls_back_and_a_confirmed_one_stays() {
    let Some(broker) = broker() else { return };
    let keys = tempfile::tempdir().unwrap();
    let (key, line) = keygen(keys.path(), "ops.key");
    let p = unique_id("fleet-trial");
    let mut w = Watcher::start_on(&broker, &format!("{p}/#")).await;
    let g = start("trial", &broker, &p, &line);
    w.next("trial/state", |_| true).await;
    let signer = Signer::load(&key).unwrap();

    // Not confirmed: applied, then rolled back to the file of before.
    let before = g.text();
    let text = shared_text(&broker, &p, &line, 250);
    let m = signed_apply(&signer, &signer.key_id, "t1", "trial", 2, &text);
    send(&w, format!("{p}/trial/config/apply"), &m).await;
    let (_, r, _) = w.next("trial/config/result", |r| r["id"] == "t1").await;
    assert_eq!(r["result"], "applied", "{r}");
    assert!(g.text().contains("poll_interval_ms = 250"));
    let (_, r, _) = w.next("trial/config/result", |r| r["id"] == "t1").await;
    assert_eq!(r["result"], "rolled_back", "{r}");
    assert_eq!(g.text(), before, "the file of before is back");

    // Confirmed by the CLI: it stays past its trial.
    let file = keys.path().join("line.toml");
    std::fs::write(&file, shared_text(&broker, &p, &line, 350)).unwrap();
    let url = format!("mqtt://{broker}");
    let (ok, out, err) = cli(&[
        "fleet",
        "apply",
        "--broker",
        &url,
        "--prefix",
        &p,
        "--key",
        key.to_str().unwrap(),
        "--gateway",
        "trial",
        "--confirm-s",
        "2",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    send(&w, format!("{p}/trial/marker"), &json!(1)).await;
    w.next("trial/marker", |_| true).await;
    assert!(
        !w.kept
            .iter()
            .any(|m| m.0.ends_with("/config/result") && m.1["result"] == "rolled_back"),
        "{:?}",
        w.kept
    );
    assert!(g.text().contains("poll_interval_ms = 350"));
    clear_retained_under(&w, &p, "trial").await;
}

/// A config whose broker URL leads nowhere cannot be confirmed: the gateway puts its previous
/// file back by itself, and the restored session reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_cuts_the_broker_off_undoes_itself() {
    let Some(broker) = broker() else { return };
    let keys = tempfile::tempdir().unwrap();
    let (key, line) = keygen(keys.path(), "ops.key");
    let p = unique_id("fleet-cut");
    let mut w = Watcher::start_on(&broker, &format!("{p}/#")).await;
    let g = start("cut", &broker, &p, &line);
    w.next("cut/state", |_| true).await;
    let signer = Signer::load(&key).unwrap();
    let before = g.text();
    let cut = shared_text("127.0.0.1:1", &p, &line, 100);
    let m = signed_apply(&signer, &signer.key_id, "cut1", "cut", 3, &cut);
    send(&w, format!("{p}/cut/config/apply"), &m).await;
    // `applied` cannot reach the broker; the rollback's report does, from the restored config.
    let (_, r, _) = w.next("cut/config/result", |r| r["id"] == "cut1").await;
    assert_eq!(r["result"], "rolled_back", "{r}");
    assert_eq!(g.text(), before);
    clear_retained_under(&w, &p, "cut").await;
}
