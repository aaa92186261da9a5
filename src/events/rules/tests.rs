//! Unit tests of `events/rules.rs`.

use super::*;
use crate::config::Priority;
use crate::model::Value;

fn setup(rules: &str) -> (Engine, Instant) {
    let text = format!(
        r#"
[gateway]
id = "gw"
[[buses]]
name = "b"
kind = "tcp"
address = "h:502"
[[devices]]
id = "d"
bus = "b"
unit = 1
points = [
  {{ id = "t", table = "holding", address = 0, type = "f32", min = -50.0, max = 500.0 }},
  {{ id = "c", table = "holding", address = 2, type = "u32" }},
]
{rules}
"#
    );
    let config = crate::config::parse(&text).unwrap().config;
    let t0 = Instant::now();
    (Engine::new(&config, &HashSet::new(), t0), t0)
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn sample(e: &mut Engine, point: usize, x: f64, now: Instant) -> Vec<Draft> {
    let mut out = Vec::new();
    e.on_sample(0, point, &Ok(Value::Float(x)), 0, now, &mut out);
    out
}

fn kinds(d: &[Draft]) -> Vec<(EventType, EventState)> {
    d.iter().map(|d| (d.kind, d.state)).collect()
}

const ABOVE: &str = r#"[[rules]]
id = "hot"
device = "d"
point = "t"
kind = "above"
threshold = 90.0
clear = 85.0
for_ms = 2000
priority = "emergency""#;

#[test]
fn a_spike_shorter_than_the_on_delay_raises_nothing() {
    let (mut e, t0) = setup(ABOVE);
    assert!(sample(&mut e, 0, 95.0, at(t0, 0)).is_empty());
    assert!(sample(&mut e, 0, 96.0, at(t0, 1500)).is_empty());
    assert!(sample(&mut e, 0, 80.0, at(t0, 1900)).is_empty());
    let mut out = Vec::new();
    e.tick(0, at(t0, 5000), &mut out);
    assert!(out.is_empty());
}

#[test]
fn the_condition_held_for_the_on_delay_raises_once_by_sample_or_by_tick() {
    let (mut e, t0) = setup(ABOVE);
    assert!(sample(&mut e, 0, 95.0, at(t0, 0)).is_empty());
    let out = sample(&mut e, 0, 95.0, at(t0, 2000));
    assert_eq!(
        kinds(&out),
        [(EventType::ThresholdExceeded, EventState::Active)]
    );
    assert_eq!(out[0].priority, Priority::Emergency);
    assert_eq!(out[0].alarm, Some(AlarmOp::Raise("hot".into())));
    assert!(
        sample(&mut e, 0, 99.0, at(t0, 3000)).is_empty(),
        "raised once"
    );
    // By tick: no sample arrives after the condition started.
    let (mut e, t0) = setup(ABOVE);
    sample(&mut e, 0, 95.0, at(t0, 0));
    let mut out = Vec::new();
    e.tick(0, at(t0, 1999), &mut out);
    assert!(out.is_empty());
    e.tick(0, at(t0, 2000), &mut out);
    assert_eq!(
        kinds(&out),
        [(EventType::ThresholdExceeded, EventState::Active)]
    );
}

#[test]
fn hysteresis_clears_only_past_clear_and_never_chatters() {
    let (mut e, t0) = setup(ABOVE);
    sample(&mut e, 0, 95.0, at(t0, 0));
    sample(&mut e, 0, 95.0, at(t0, 2000));
    for (i, x) in [89.0, 91.0, 86.0, 90.5, 85.1].iter().enumerate() {
        assert!(
            sample(&mut e, 0, *x, at(t0, 3000 + i as u64 * 100)).is_empty(),
            "{x}"
        );
    }
    let out = sample(&mut e, 0, 85.0, at(t0, 4000));
    assert_eq!(
        kinds(&out),
        [(EventType::ThresholdCleared, EventState::Cleared)]
    );
    assert_eq!(out[0].alarm, Some(AlarmOp::Clear("hot".into())));
    assert!(
        sample(&mut e, 0, 84.0, at(t0, 4100)).is_empty(),
        "cleared once"
    );
}

#[test]
fn the_off_delay_clears_only_once_the_clear_condition_held_clear_for_ms() {
    let rule = format!("{ABOVE}\nclear_for_ms = 3000");
    let (mut e, t0) = setup(&rule);
    sample(&mut e, 0, 95.0, at(t0, 0));
    assert_eq!(sample(&mut e, 0, 95.0, at(t0, 2000)).len(), 1, "raised");
    // A chattering input: back under clear, then over it again before 3 s: no clear.
    assert!(sample(&mut e, 0, 80.0, at(t0, 3000)).is_empty());
    assert!(sample(&mut e, 0, 80.0, at(t0, 5000)).is_empty());
    assert!(sample(&mut e, 0, 87.0, at(t0, 5500)).is_empty());
    let mut out = Vec::new();
    e.tick(0, at(t0, 9000), &mut out);
    assert!(out.is_empty(), "the dip was shorter than clear_for_ms");
    // Under clear for 3 s: cleared, by sample ...
    assert!(sample(&mut e, 0, 80.0, at(t0, 10_000)).is_empty());
    let out = sample(&mut e, 0, 80.0, at(t0, 13_000));
    assert_eq!(
        kinds(&out),
        [(EventType::ThresholdCleared, EventState::Cleared)]
    );
    // ... or by tick, when no sample comes after the dip began.
    let (mut e, t0) = setup(&rule);
    sample(&mut e, 0, 95.0, at(t0, 0));
    sample(&mut e, 0, 95.0, at(t0, 2000));
    sample(&mut e, 0, 80.0, at(t0, 3000));
    let mut out = Vec::new();
    e.tick(0, at(t0, 5999), &mut out);
    assert!(out.is_empty());
    e.tick(0, at(t0, 6000), &mut out);
    assert_eq!(
        kinds(&out),
        [(EventType::ThresholdCleared, EventState::Cleared)]
    );
    assert_eq!(out[0].value, Some(Value::Float(80.0)));
}

#[test]
fn below_and_outside_mirror_above() {
    let (mut e, t0) = setup(
        r#"[[rules]]
id = "low"
device = "d"
point = "t"
kind = "below"
threshold = 10.0
clear = 12.0
[[rules]]
id = "band"
device = "d"
point = "c"
kind = "outside"
low = 100.0
high = 200.0"#,
    );
    assert_eq!(
        kinds(&sample(&mut e, 0, 9.0, at(t0, 0))),
        [(EventType::ThresholdExceeded, EventState::Active)]
    );
    assert!(sample(&mut e, 0, 11.0, at(t0, 100)).is_empty());
    assert_eq!(
        kinds(&sample(&mut e, 0, 12.0, at(t0, 200))),
        [(EventType::ThresholdCleared, EventState::Cleared)]
    );
    assert_eq!(
        kinds(&sample(&mut e, 1, 250.0, at(t0, 0))),
        [(EventType::ThresholdExceeded, EventState::Active)]
    );
    assert_eq!(
        kinds(&sample(&mut e, 1, 150.0, at(t0, 100))),
        [(EventType::ThresholdCleared, EventState::Cleared)]
    );
    assert_eq!(
        kinds(&sample(&mut e, 1, 50.0, at(t0, 200))),
        [(EventType::ThresholdExceeded, EventState::Active)]
    );
}

#[test]
fn equals_fires_once_per_arrival() {
    let (mut e, t0) = setup(
        r#"[[rules]]
id = "batch"
device = "d"
point = "c"
kind = "equals"
threshold = 1000.0"#,
    );
    assert!(sample(&mut e, 1, 999.0, at(t0, 0)).is_empty());
    assert_eq!(
        kinds(&sample(&mut e, 1, 1000.0, at(t0, 100))),
        [(EventType::DataPointReached, EventState::Info)]
    );
    assert!(
        sample(&mut e, 1, 1000.0, at(t0, 200)).is_empty(),
        "not per poll"
    );
    assert!(sample(&mut e, 1, 0.0, at(t0, 300)).is_empty());
    assert_eq!(
        sample(&mut e, 1, 1000.0, at(t0, 400)).len(),
        1,
        "a new arrival"
    );
}

#[test]
fn rate_of_change_beyond_per_s_is_abnormal() {
    let (mut e, t0) = setup(
        r#"[[rules]]
id = "jump"
device = "d"
point = "t"
kind = "rate"
per_s = 5.0"#,
    );
    assert!(sample(&mut e, 0, 20.0, at(t0, 0)).is_empty());
    assert!(sample(&mut e, 0, 24.0, at(t0, 1000)).is_empty(), "4/s");
    let out = sample(&mut e, 0, 34.0, at(t0, 2000));
    assert_eq!(
        kinds(&out),
        [(EventType::DeviceAbnormal, EventState::Active)]
    );
    assert!(out[0].message.contains("rate_of_change"));
    assert_eq!(
        kinds(&sample(&mut e, 0, 35.0, at(t0, 3000))),
        [(EventType::DeviceAbnormal, EventState::Cleared)]
    );
}

#[test]
fn a_frozen_or_missing_value_goes_stale_after_for_ms() {
    let (mut e, t0) = setup(
        r#"[[rules]]
id = "frozen"
device = "d"
point = "c"
kind = "stale"
for_ms = 10000"#,
    );
    sample(&mut e, 1, 5.0, at(t0, 0));
    sample(&mut e, 1, 5.0, at(t0, 5000));
    let mut out = Vec::new();
    assert!(e.tick(0, at(t0, 9999), &mut out).is_empty());
    let stale = e.tick(0, at(t0, 10_000), &mut out);
    assert_eq!(stale, [(0, 1)]);
    assert_eq!(
        kinds(&out),
        [(EventType::DeviceAbnormal, EventState::Active)]
    );
    assert!(out[0].message.contains("stale"));
    out.clear();
    assert!(
        e.tick(0, at(t0, 20_000), &mut out).is_empty(),
        "raised once"
    );
    assert_eq!(
        kinds(&sample(&mut e, 1, 6.0, at(t0, 21_000))),
        [(EventType::DeviceAbnormal, EventState::Cleared)]
    );
}

/// What a tick did: its drafts' kinds and the points it turned stale.
type Ticked = (Vec<(EventType, EventState)>, Vec<(usize, usize)>);

/// A tick at `ms`.
fn ticked(e: &mut Engine, t0: Instant, ms: u64) -> Ticked {
    let mut out = Vec::new();
    let stale = e.tick(0, at(t0, ms), &mut out);
    (kinds(&out), stale)
}

#[test]
fn a_tick_that_found_nothing_due_still_sees_what_a_later_sample_set_running() {
    let frozen = "[[rules]]\nid = \"frozen\"\ndevice = \"d\"\npoint = \"c\"\nkind = \"stale\"\nfor_ms = 10000";
    let (mut e, t0) = setup(&format!("{ABOVE}\nclear_for_ms = 1000\n{frozen}"));
    let nothing = (vec![], vec![]);
    // Nothing is waiting but the stale rule's ten seconds: a tick finds nothing.
    assert_eq!(ticked(&mut e, t0, 100), nothing);
    // An on-delay started by a sample runs out before that, and is seen when it does...
    sample(&mut e, 0, 95.0, at(t0, 3000));
    assert_eq!(ticked(&mut e, t0, 4999), nothing);
    let raised = (EventType::ThresholdExceeded, EventState::Active);
    assert_eq!(ticked(&mut e, t0, 5000), (vec![raised], vec![]));
    let stale = (EventType::DeviceAbnormal, EventState::Active);
    assert_eq!(ticked(&mut e, t0, 10_000), (vec![stale], vec![(0, 1)]));
    // ...as are an off-delay and a stale rule cleared by a value that then stays frozen.
    sample(&mut e, 0, 80.0, at(t0, 11_000));
    sample(&mut e, 1, 5.0, at(t0, 11_000));
    assert_eq!(ticked(&mut e, t0, 11_999), nothing);
    let cleared = (EventType::ThresholdCleared, EventState::Cleared);
    assert_eq!(ticked(&mut e, t0, 12_000), (vec![cleared], vec![]));
    assert_eq!(ticked(&mut e, t0, 20_999), nothing);
    assert_eq!(ticked(&mut e, t0, 21_000), (vec![stale], vec![(0, 1)]));
}

#[test]
fn offline_then_online_and_abnormal_values_are_built_in() {
    let (mut e, t0) = setup("");
    let mut out = Vec::new();
    e.on_status(0, true, "", false, 0, t0, &mut out);
    assert_eq!(kinds(&out), [(EventType::DeviceOnline, EventState::Info)]);
    out.clear();
    e.on_status(0, false, "timed out", false, 0, t0, &mut out);
    assert_eq!(
        kinds(&out),
        [(EventType::DeviceOffline, EventState::Active)]
    );
    assert!(out[0].message.contains("timed out"));
    out.clear();
    e.on_status(0, true, "", false, 0, t0, &mut out);
    assert_eq!(
        kinds(&out),
        [(EventType::DeviceOnline, EventState::Cleared)]
    );
    // Out of the point's min/max, an exception, a NaN: abnormal once, cleared when good.
    assert_eq!(
        kinds(&sample(&mut e, 0, 600.0, t0)),
        [(EventType::DeviceAbnormal, EventState::Active)]
    );
    assert!(sample(&mut e, 0, 700.0, t0).is_empty());
    let mut out = Vec::new();
    e.on_sample(
        0,
        0,
        &Err(PointError::Exception(crate::modbus::reply::Exception(2))),
        0,
        t0,
        &mut out,
    );
    assert!(out.is_empty(), "already abnormal");
    assert_eq!(
        kinds(&sample(&mut e, 0, 20.0, t0)),
        [(EventType::DeviceAbnormal, EventState::Cleared)]
    );
    e.on_sample(
        0,
        0,
        &Err(PointError::Decode(
            crate::modbus::codec::CodecError::NotFinite(f64::NAN),
        )),
        0,
        t0,
        &mut out,
    );
    assert_eq!(
        kinds(&out),
        [(EventType::DeviceAbnormal, EventState::Active)]
    );
    out.clear();
    e.on_sample(
        0,
        1,
        &Err(PointError::Link(crate::modbus::reply::LinkError::Timeout(
            Duration::from_secs(1),
        ))),
        0,
        t0,
        &mut out,
    );
    assert!(
        out.is_empty(),
        "link faults are the offline alarm's business"
    );
}

#[test]
fn alarms_active_before_a_restart_are_not_raised_again() {
    let text = format!(
        "[gateway]\nid = \"gw\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"h:1\"\n[[devices]]\nid = \"d\"\nbus = \"b\"\nunit = 1\npoints = [{{ id = \"t\", table = \"holding\", address = 0, type = \"f32\" }}]\n{ABOVE}"
    );
    let config = crate::config::parse(&text).unwrap().config;
    let t0 = Instant::now();
    let active: HashSet<String> = ["hot".to_string(), offline_key("d")].into();
    let mut e = Engine::new(&config, &active, t0);
    assert!(sample(&mut e, 0, 95.0, at(t0, 0)).is_empty());
    assert!(sample(&mut e, 0, 95.0, at(t0, 5000)).is_empty());
    assert_eq!(
        kinds(&sample(&mut e, 0, 80.0, at(t0, 6000))),
        [(EventType::ThresholdCleared, EventState::Cleared)]
    );
    let mut out = Vec::new();
    e.on_status(0, true, "", false, 0, t0, &mut out);
    assert_eq!(
        kinds(&out),
        [(EventType::DeviceOnline, EventState::Cleared)]
    );
}

#[test]
fn a_line_fault_raises_link_kind_once_and_three_good_polls_clear_it() {
    use crate::modbus::reply::{Fault, LinkError};
    let (mut e, t0) = setup("");
    let poll = |e: &mut Engine, r: Result<Value, PointError>, ms: u64| {
        let mut out = Vec::new();
        e.on_poll(
            0,
            &[(0, r), (1, Ok(Value::UInt(1)))],
            0,
            at(t0, ms),
            &mut out,
        );
        out
    };
    let wrong_id = || {
        Err(PointError::Link(LinkError::Protocol(
            Fault::Id,
            "answer does not match the request (transaction or unit id)".into(),
        )))
    };
    let timeout = || {
        Err(PointError::Link(LinkError::Timeout(Duration::from_millis(
            500,
        ))))
    };
    let good = || Ok(Value::Float(20.0));
    let out = poll(&mut e, wrong_id(), 0);
    assert_eq!(
        kinds(&out),
        [(EventType::DeviceAbnormal, EventState::Active)]
    );
    assert!(
        out[0].message.starts_with("link:id: "),
        "{}",
        out[0].message
    );
    assert_eq!(out[0].alarm, Some(AlarmOp::Raise("link:d".into())));
    assert!(poll(&mut e, wrong_id(), 100).is_empty(), "once per episode");
    // Two good polls, then a timeout: not three in a row.
    assert!(poll(&mut e, good(), 200).is_empty());
    assert!(poll(&mut e, good(), 300).is_empty());
    assert!(
        poll(&mut e, timeout(), 400).is_empty(),
        "a timeout is not a line fault"
    );
    assert!(poll(&mut e, good(), 500).is_empty());
    assert!(poll(&mut e, good(), 600).is_empty());
    let out = poll(&mut e, good(), 700);
    assert_eq!(
        kinds(&out),
        [(EventType::DeviceAbnormal, EventState::Cleared)]
    );
    assert_eq!(out[0].alarm, Some(AlarmOp::Clear("link:d".into())));
    // A timeout alone raises nothing here (the offline alarm's).
    assert!(poll(&mut e, timeout(), 800).is_empty());
}
