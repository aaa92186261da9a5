//! Bad input from devices and links: every fault gives the faulty device's points quality
//! `bad` and a counter, leaves the other slaves on the same bus polling, and panics nothing.

mod common;

use common::*;
use edge_gateway::modbus::simulator::{Fault, Profile, BOILER, PUMP};
use edge_gateway::model::{Quality, Value};
use edge_gateway::Gateway;

/// Starts the boiler+pump gateway on the simulator, scripts `fault` on the pump, and checks
/// the pump goes bad while the boiler keeps being polled.
async fn pump_fault_leaves_boiler_polling(
    fault: Fault,
    counter: &str,
) -> (Gateway, tempfile::TempDir) {
    let (sim, addr, _cancel) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{}", tcp_bus(&addr.to_string()), BOILER_AND_PUMP),
    ))
    .await
    .unwrap();
    wait_for("pump good", || {
        quality(&gw, "pump", "speed") == Quality::Good
    })
    .await;
    sim.set_fault(PUMP, Some(fault.clone()));
    wait_for("pump bad", || quality(&gw, "pump", "speed") == Quality::Bad).await;
    let err = point(&gw, "pump", "speed").error.unwrap_or_default();
    assert!(!err.is_empty(), "{fault:?}: a bad point says why");
    wait_for("fault counted", || requests(&gw, "pump", counter) > 0).await;
    // The healthy slave on the same link goes on being polled with good values.
    let before = requests(&gw, "boiler", "ok");
    wait_for("boiler polled on", || {
        requests(&gw, "boiler", "ok") >= before + 10
    })
    .await;
    assert_eq!(
        quality(&gw, "boiler", "temperature"),
        Quality::Good,
        "{fault:?}"
    );
    // Clearing the fault heals the pump.
    sim.set_fault(PUMP, None);
    wait_for("pump good again", || {
        quality(&gw, "pump", "speed") == Quality::Good
    })
    .await;
    (gw, dir)
}

#[tokio::test]
async fn exception_responses_are_bad_quality_named_and_counted_while_the_device_stays_online() {
    for code in [0x01u8, 0x02, 0x03, 0x04, 0x06] {
        let (gw, _dir) =
            pump_fault_leaves_boiler_polling(Fault::Exception(code), "exception").await;
        assert!(
            online(&gw, "pump"),
            "an exception is an answer: the device is online"
        );
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn exception_names_reach_the_point_error() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{}", tcp_bus(&addr.to_string()), BOILER_AND_PUMP),
    ))
    .await
    .unwrap();
    sim.set_fault(PUMP, Some(Fault::Exception(0x04)));
    wait_for("pump bad", || quality(&gw, "pump", "speed") == Quality::Bad).await;
    assert_eq!(
        point(&gw, "pump", "speed").error.unwrap(),
        "device answered server device failure"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_response_for_the_wrong_unit_is_a_fault_not_a_value() {
    let (gw, _dir) = pump_fault_leaves_boiler_polling(Fault::WrongUnit, "error").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_response_with_the_wrong_transaction_id_is_a_fault_not_a_value() {
    let (gw, _dir) = pump_fault_leaves_boiler_polling(Fault::WrongTransaction, "error").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_short_frame_times_out_and_the_link_recovers() {
    let (gw, _dir) = pump_fault_leaves_boiler_polling(Fault::Short, "timeout").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_over_long_frame_is_refused() {
    let (gw, _dir) = pump_fault_leaves_boiler_polling(Fault::Overlong, "error").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_connection_reset_mid_frame_reconnects() {
    let (gw, _dir) = pump_fault_leaves_boiler_polling(Fault::ResetMidFrame, "error").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_silent_slave_goes_bad_and_its_neighbour_polls_on() {
    let (gw, _dir) = pump_fault_leaves_boiler_polling(Fault::Silent, "timeout").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn connection_refused_marks_devices_offline_without_panic() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!(
            "{}{}",
            tcp_bus(&format!("127.0.0.1:{port}")),
            BOILER_AND_PUMP
        ),
    ))
    .await
    .unwrap();
    wait_for("connect failures counted", || {
        requests(&gw, "boiler", "error") >= 2
    })
    .await;
    wait_for("bad", || {
        quality(&gw, "boiler", "temperature") == Quality::Bad
    })
    .await;
    let err = point(&gw, "boiler", "temperature").error.unwrap();
    assert!(
        err.contains("cannot connect") || err.contains("link down"),
        "{err}"
    );
    // Whether it is an attempt or the wait before the next one, the cause is named.
    assert!(err.contains("refused"), "the cause: {err}");
    assert!(!online(&gw, "boiler") && !online(&gw, "pump"));
    // The HTTP side is unaffected.
    let body = healthz(gw.http_addr).await;
    assert!(body.contains(r#""online":0"#), "{body}");
    gw.shutdown().await;
}

#[tokio::test]
async fn nan_and_infinity_floats_are_bad_quality_and_counted() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{}", tcp_bus(&addr.to_string()), BOILER_AND_PUMP),
    ))
    .await
    .unwrap();
    wait_for("good", || {
        quality(&gw, "boiler", "temperature") == Quality::Good
    })
    .await;
    for regs in [[0x7FC0u16, 0], [0x7F80, 0], [0xFF80, 0]] {
        sim.with_memory(BOILER, |m| m.holding[0..2].copy_from_slice(&regs));
        wait_for("bad", || {
            quality(&gw, "boiler", "temperature") == Quality::Bad
        })
        .await;
        assert!(point(&gw, "boiler", "temperature")
            .error
            .unwrap()
            .contains("not a number"));
        // The other points of the same read are still good.
        assert_eq!(quality(&gw, "boiler", "setpoint"), Quality::Good);
        sim.with_memory(BOILER, |m| {
            m.holding[0..2].copy_from_slice(&[0x42F6, 0xE979]);
        });
        wait_for("good again", || {
            quality(&gw, "boiler", "temperature") == Quality::Good
        })
        .await;
    }
    assert!(
        gw.metrics.devices[0]
            .decode_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn one_bad_address_in_a_merged_read_costs_one_point() {
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    // The simulator has 200 holding registers: 205 does not exist, and max_gap merges all three.
    let body = format!(
        "{}{}",
        tcp_bus(&addr.to_string()),
        r#"
[[devices]]
id = "d"
bus = "b"
unit = 1
poll_interval_ms = 100
max_gap = 20
points = [
  { id = "a", table = "holding", address = 195, type = "u16" },
  { id = "b", table = "holding", address = 198, type = "u16" },
  { id = "missing", table = "holding", address = 205, type = "u16" },
]
"#
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("split plan read", || {
        quality(&gw, "d", "a") == Quality::Good && quality(&gw, "d", "missing") == Quality::Bad
    })
    .await;
    assert_eq!(quality(&gw, "d", "b"), Quality::Good);
    // Once split, each poll costs one exception (the bad point), not a failed device.
    let ok = requests(&gw, "d", "ok");
    let ex = requests(&gw, "d", "exception");
    wait_for("more polls", || requests(&gw, "d", "ok") >= ok + 5).await;
    let (ok2, ex2) = (
        requests(&gw, "d", "ok") - ok,
        requests(&gw, "d", "exception") - ex,
    );
    assert!(
        ex2 <= ok2 + 1,
        "after the split, one exception per poll: ok {ok2} exceptions {ex2}"
    );
    assert!(online(&gw, "d"));
    gw.shutdown().await;
}

/// SPEC `poll_interval_ms` on a point: a slow register is read at its own rate, not at every
/// poll of its device, and is not stale between its reads.
#[tokio::test]
async fn a_point_with_its_own_poll_interval_is_read_at_that_rate_and_is_not_stale_between() {
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        tcp_bus(&addr.to_string()),
        r#"
[[devices]]
id = "d"
bus = "b"
unit = 1
poll_interval_ms = 100
points = [
  { id = "fast", table = "holding", address = 0, type = "f32" },
  { id = "slow", table = "holding", address = 2, type = "u16", poll_interval_ms = 60000 },
]
"#
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("both read", || {
        quality(&gw, "d", "fast") == Quality::Good && quality(&gw, "d", "slow") == Quality::Good
    })
    .await;
    let slow_at = point(&gw, "d", "slow").ts;
    let ok = requests(&gw, "d", "ok");
    // Thirty polls of the device, and longer than 3 × its interval (the stale limit, were the
    // device's rate the point's).
    let start = std::time::Instant::now();
    wait_for("30 more polls and 3.5 s", || {
        requests(&gw, "d", "ok") >= ok + 30
            && start.elapsed() > std::time::Duration::from_millis(3500)
    })
    .await;
    assert_eq!(
        point(&gw, "d", "slow").ts,
        slow_at,
        "read once, not every poll"
    );
    assert_eq!(
        quality(&gw, "d", "slow"),
        Quality::Good,
        "not stale between its reads"
    );
    assert!(point(&gw, "d", "fast").ts > slow_at);
    gw.shutdown().await;
}

#[tokio::test]
async fn writes_jump_the_queue_and_reach_the_device() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{}", tcp_bus(&addr.to_string()), BOILER_AND_PUMP),
    ))
    .await
    .unwrap();
    wait_for("online", || online(&gw, "boiler")).await;
    gw.write("boiler", "setpoint", Value::Float(72.5))
        .await
        .unwrap();
    assert_eq!(sim.with_memory(BOILER, |m| m.holding[2]), Some(725));
    gw.write("boiler", "burner", Value::Bool(false))
        .await
        .unwrap();
    assert_eq!(sim.with_memory(BOILER, |m| m.coils[0]), Some(false));
    wait_for("new value read back", || {
        point(&gw, "boiler", "setpoint")
            .value
            .and_then(|v| v.as_f64())
            .is_some_and(|v| (v - 72.5).abs() < 1e-9)
    })
    .await;
    // Not writable, and a dead device: clear errors.
    let e = gw.write("pump", "speed", Value::Int(1)).await.unwrap_err();
    assert_eq!(e.to_string(), "point is not writable");
    sim.set_fault(PUMP, Some(Fault::Silent));
    let e = gw
        .write("pump", "speed_setpoint", Value::Int(1000))
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("device unreachable"), "{e}");
    sim.set_fault(PUMP, Some(Fault::Exception(0x03)));
    let e = gw
        .write("pump", "speed_setpoint", Value::Int(1000))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "device answered illegal data value");
    gw.shutdown().await;
}

#[tokio::test]
async fn inter_request_delay_is_silence_on_the_wire_between_any_two_requests() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let bus = tcp_bus(&addr.to_string()).replace(
        "retries = 0\n",
        "retries = 0\ninter_request_delay_ms = 40\n",
    );
    let gw = Gateway::start(config(dir.path(), &format!("{bus}{BOILER_AND_PUMP}")))
        .await
        .unwrap();
    wait_for("20 requests", || {
        sim.arrivals(BOILER).len() + sim.arrivals(PUMP).len() >= 20
    })
    .await;
    gw.shutdown().await;
    let mut all: Vec<_> = sim
        .arrivals(BOILER)
        .into_iter()
        .chain(sim.arrivals(PUMP))
        .collect();
    all.sort();
    // A lower bound only: a slow machine can widen the gaps, never narrow them.
    for w in all.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= std::time::Duration::from_millis(40),
            "only {gap:?} between two requests"
        );
    }
}

#[tokio::test]
async fn an_offline_slave_is_only_probed_while_its_neighbour_is_polled_on_schedule() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{}", tcp_bus(&addr.to_string()), BOILER_AND_PUMP),
    ))
    .await
    .unwrap();
    wait_for("pump online", || online(&gw, "pump")).await;
    sim.set_fault(PUMP, Some(Fault::Silent));
    wait_for("pump offline", || !online(&gw, "pump")).await;
    let pump_before = sim.arrivals(PUMP).len();
    let boiler_before = sim.arrivals(BOILER).len();
    wait_for("30 boiler requests", || {
        sim.arrivals(BOILER).len() >= boiler_before + 30
    })
    .await;
    let probes = sim.arrivals(PUMP).len() - pump_before;
    assert!(
        probes <= 4,
        "{probes} requests reached the dead slave during 30 healthy polls"
    );
    // Back to life: a probe finds it.
    sim.set_fault(PUMP, None);
    wait_for("pump back online", || online(&gw, "pump")).await;
    gw.shutdown().await;
}

/// Hostile test, attack 10: an answer with more registers than asked (3 asked, 5 or 125
/// given) was taken as good. It is a link fault now: the values cannot be placed.
#[tokio::test]
async fn an_answer_with_more_registers_than_asked_is_a_fault_not_a_value() {
    for extra in [2, 122] {
        let (gw, _dir) =
            pump_fault_leaves_boiler_polling(Fault::ExtraRegisters(extra), "error").await;
        gw.shutdown().await;
    }
}

/// Hostile test, attack 11: an exception for another function (0x90 to an FC 3 read) was
/// taken as "illegal data address" and split the read plan for good. It is a link fault:
/// only a proper exception 02 to the request's own function may split a plan.
#[tokio::test]
async fn an_exception_for_another_function_is_a_fault_and_splits_no_plan() {
    let (gw, _dir) = pump_fault_leaves_boiler_polling(
        Fault::ForeignException {
            function: 0x10,
            code: 0x02,
        },
        "error",
    )
    .await;
    let err = point(&gw, "pump", "speed").error.unwrap_or_default();
    assert!(!err.contains("illegal data address"), "{err}");
    gw.shutdown().await;
}

/// What a test's log subscriber wrote.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hostile test, attack 12: a fault whose text changed on every poll (it carried bytes from
/// the wire) logged a new line every poll. One episode is one line now, whatever its text.
#[tokio::test]
async fn a_fault_whose_text_changes_every_poll_is_logged_once() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test's runtime is single-threaded: every task logs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{}", tcp_bus(&addr.to_string()), BOILER_AND_PUMP),
    ))
    .await
    .unwrap();
    // Offline after two failures, the pump is then probed with a growing back-off: a few
    // polls are enough.
    for i in 0..4u8 {
        let before = requests(&gw, "pump", "error");
        sim.set_fault(PUMP, Some(Fault::ExtraRegisters(1 + i % 3)));
        wait_for("a faulty poll", || requests(&gw, "pump", "error") > before).await;
    }
    gw.shutdown().await;
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).to_string();
    // The offline line (once, with its cause) is the status change, not the episode's line.
    let lines = text
        .lines()
        .filter(|l| l.contains("answer has") && !l.contains("offline"))
        .count();
    assert_eq!(lines, 1, "{text}");
}

/// SPEC: wrong ids, garbage and other answers that are wrong rather than missing raise
/// `device_abnormal` with reason `link:<kind>` once per episode, cleared after 3 good polls.
#[tokio::test]
async fn a_wrong_answer_raises_device_abnormal_with_its_link_kind_once_per_episode() {
    for (fault, kind) in [
        (Fault::WrongUnit, "link:id"),
        (Fault::WrongTransaction, "link:id"),
        (Fault::ExtraRegisters(2), "link:length"),
    ] {
        let (gw, _dir) = pump_fault_leaves_boiler_polling(fault.clone(), "error").await;
        // The helper ends with the fault cleared and the pump good again: raised once, cleared
        // once the line had been good three polls in a row.
        wait_for_async("the clear", || async {
            link_events(&gw, "pump").await.len() >= 2
        })
        .await;
        let events = link_events(&gw, "pump").await;
        let states: Vec<_> = events
            .iter()
            .map(|e| e["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["active", "cleared"], "{fault:?}: {events:#?}");
        let message = events[0]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{kind}: ")),
            "{fault:?}: {message}"
        );
        assert_eq!(events[0]["priority"], "high");
        assert_eq!(events[0]["pointId"], serde_json::Value::Null);
        gw.shutdown().await;
    }
}

/// Hostile test #30, item 7: with another function's exception (0x90 to an FC 3 read) the
/// device got three times its requests (16 → 48 per 8 s) on an RTU line, where the link stays
/// open and every fault was retried. A wrong answer that repeats is not retried, and the
/// merged read is not split: one request per poll, over TCP and RTU alike.
#[tokio::test]
async fn another_functions_exception_costs_one_request_per_poll() {
    for kind in ["tcp", "rtu_over_tcp"] {
        let (sim, tcp, cancel) = start_sim(Profile::Demo).await;
        let addr = if kind == "tcp" {
            tcp
        } else {
            edge_gateway::modbus::simulator::spawn_rtu_over_tcp(
                sim.clone(),
                "127.0.0.1:0",
                cancel.clone(),
            )
            .await
            .unwrap()
        };
        let bus = tcp_bus(&addr.to_string())
            .replace("retries = 0", "retries = 2")
            .replace("kind = \"tcp\"", &format!("kind = \"{kind}\""));
        let devices = BOILER_AND_PUMP
            .replace("offline_after = 2", "offline_after = 1000")
            .replace(
                r#"{ id = "speed", table = "input", address = 0, type = "u16" },"#,
                r#"{ id = "a", table = "holding", address = 1, type = "u16" },
  { id = "b", table = "holding", address = 2, type = "u16" },"#,
            );
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::start(config(dir.path(), &format!("{bus}{devices}")))
            .await
            .unwrap();
        wait_for("pump good", || quality(&gw, "pump", "a") == Quality::Good).await;
        sim.set_fault(
            PUMP,
            Some(Fault::ForeignException {
                function: 0x10,
                code: 0x02,
            }),
        );
        wait_for("pump bad", || quality(&gw, "pump", "a") == Quality::Bad).await;
        // Counted by time: the simulator keeps the last 256 arrivals only.
        let t0 = tokio::time::Instant::now().into_std();
        let since = |unit: u8| sim.arrivals(unit).iter().filter(|t| **t >= t0).count();
        // The boiler's poll is two requests (holding 0-2, coil 0), the pump's one (holding 0-2).
        wait_for("40 boiler requests", || since(BOILER) >= 40).await;
        let (pump, boiler) = (since(PUMP), since(BOILER));
        assert!(
            pump * 2 <= boiler + 4,
            "{kind}: {pump} requests to the pump while the boiler had {boiler}"
        );
        gw.shutdown().await;
        cancel.cancel();
    }
}
