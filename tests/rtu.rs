//! Modbus RTU over a real serial line (a socat pty pair): CRC errors, garbage bytes, answers for
//! the wrong unit and a dead slave on the same RS-485 bus as a healthy one; RTU over TCP.

mod common;

use common::*;
use edge_gateway::modbus::simulator::{self, Fault, Profile, Simulator, PUMP};
use edge_gateway::model::Quality;
use edge_gateway::Gateway;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

async fn rtu_gateway() -> Option<(
    Gateway,
    Simulator,
    PtyPair,
    CancellationToken,
    tempfile::TempDir,
)> {
    let Some(pair) = pty_pair().await else {
        skipped("socat is not installed");
        return None;
    };
    let sim = Simulator::new(Profile::Demo);
    let port = tokio_serial::new(&pair.a, 19200)
        .open_native_async()
        .expect("open pty");
    let cancel = CancellationToken::new();
    tokio::spawn(sim.clone().serve_rtu(port, cancel.clone()));
    let bus = format!(
        "[[buses]]\nname = \"b\"\nkind = \"rtu\"\nport = \"{}\"\nbaud = 19200\ntimeout_ms = 200\nretries = 0\n",
        pair.b
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &format!("{bus}{BOILER_AND_PUMP}")))
        .await
        .unwrap();
    wait_for("both good", || {
        quality(&gw, "boiler", "temperature") == Quality::Good
            && quality(&gw, "pump", "speed") == Quality::Good
    })
    .await;
    Some((gw, sim, pair, cancel, dir))
}

/// Each wrong answer is a link fault of its own kind (SPEC: `device_abnormal`, reason
/// `link:<kind>`, once per episode, cleared after 3 good polls); the other slave polls on.
#[tokio::test]
async fn rtu_line_faults_make_one_slave_bad_and_leave_the_other_polling() {
    let Some((gw, sim, _pair, cancel, _dir)) = rtu_gateway().await else {
        return;
    };
    for (fault, counter, link) in [
        (Fault::BadCrc, "error", Some("link:crc")),
        (Fault::Garbage, "error", Some("link:garbage")),
        (Fault::WrongUnit, "error", Some("link:id")),
        (Fault::Short, "error", Some("link:truncated")),
        (Fault::Exception(0x02), "exception", None),
    ] {
        let raised = link_events(&gw, "pump").await.len();
        let before = requests(&gw, "pump", counter);
        sim.set_fault(PUMP, Some(fault.clone()));
        wait_for("pump bad", || quality(&gw, "pump", "speed") == Quality::Bad).await;
        wait_for("counted", || requests(&gw, "pump", counter) > before).await;
        let ok = requests(&gw, "boiler", "ok");
        wait_for("boiler still polled", || {
            requests(&gw, "boiler", "ok") >= ok + 5
        })
        .await;
        assert_eq!(
            quality(&gw, "boiler", "temperature"),
            Quality::Good,
            "{fault:?}"
        );
        sim.set_fault(PUMP, None);
        wait_for("pump recovers", || {
            quality(&gw, "pump", "speed") == Quality::Good
        })
        .await;
        let Some(link) = link else { continue };
        wait_for_async("raised and cleared", || async {
            link_events(&gw, "pump").await.len() >= raised + 2
        })
        .await;
        let events = link_events(&gw, "pump").await;
        let new: Vec<_> = events[raised..]
            .iter()
            .map(|e| (e["state"].as_str().unwrap(), e["message"].as_str().unwrap()))
            .collect();
        assert_eq!(new.len(), 2, "{fault:?}: {new:?}");
        assert_eq!(new[0].0, "active", "{fault:?}");
        assert!(
            new[0].1.starts_with(&format!("{link}: ")),
            "{fault:?}: {new:?}"
        );
        assert_eq!(new[1].0, "cleared", "{fault:?}");
    }
    gw.shutdown().await;
    cancel.cancel();
}

/// `kind = "rtu_over_tcp"`: the same framing and faults on a TCP socket to a serial server
/// (here the simulator speaking RTU on TCP).
#[tokio::test]
async fn rtu_over_tcp_polls_and_names_a_crc_error() {
    let sim = Simulator::new(Profile::Demo);
    let cancel = CancellationToken::new();
    let addr = simulator::spawn_rtu_over_tcp(sim.clone(), "127.0.0.1:0", cancel.clone())
        .await
        .unwrap();
    let bus = format!(
        "[[buses]]\nname = \"b\"\nkind = \"rtu_over_tcp\"\naddress = \"{addr}\"\ntimeout_ms = 200\nretries = 0\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &format!("{bus}{BOILER_AND_PUMP}")))
        .await
        .unwrap();
    wait_for("both good", || {
        quality(&gw, "boiler", "temperature") == Quality::Good
            && quality(&gw, "pump", "speed") == Quality::Good
    })
    .await;
    sim.set_fault(PUMP, Some(Fault::BadCrc));
    wait_for_async("link:crc", || async {
        link_events(&gw, "pump")
            .await
            .first()
            .is_some_and(|e| e["message"].as_str().unwrap().starts_with("link:crc: "))
    })
    .await;
    let ok = requests(&gw, "boiler", "ok");
    wait_for("boiler still polled", || {
        requests(&gw, "boiler", "ok") >= ok + 5
    })
    .await;
    gw.shutdown().await;
    cancel.cancel();
}

#[tokio::test]
async fn a_dead_rtu_slave_goes_offline_without_stalling_the_bus() {
    let Some((gw, sim, _pair, cancel, _dir)) = rtu_gateway().await else {
        return;
    };
    sim.set_fault(PUMP, Some(Fault::Silent));
    wait_for("pump offline", || !online(&gw, "pump")).await;
    let timeouts = requests(&gw, "pump", "timeout");
    let ok = requests(&gw, "boiler", "ok");
    wait_for("boiler polled", || requests(&gw, "boiler", "ok") >= ok + 30).await;
    let probes = requests(&gw, "pump", "timeout") - timeouts;
    assert!(
        probes <= 4,
        "dead slave probed {probes} times during 30 healthy polls"
    );
    sim.set_fault(PUMP, None);
    wait_for("pump back", || online(&gw, "pump")).await;
    gw.shutdown().await;
    cancel.cancel();
}
