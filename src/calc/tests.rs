use super::Calculator;
use crate::config::{parse, Config};
use crate::model::{Quality, Value};
use crate::state::Live;
use crate::store::Restored;

const CONFIG: &str = r#"
[gateway]
id = "t"
[[buses]]
name = "b"
kind = "tcp"
address = "127.0.0.1:502"
[[devices]]
id = "boiler-1"
bus = "b"
unit = 1
points = [
  { id = "heat_out", table = "input", address = 0, type = "f32" },
  { id = "gas_in", table = "input", address = 2, type = "f32" },
  { id = "running", table = "coil", address = 0, type = "bool" },
]
[[devices]]
id = "meter"
bus = "b"
unit = 2
points = [{ id = "flow", table = "input", address = 0, type = "u16" }]

[[calculated]]
device = "boiler-1"
point = "efficiency"
expr = "heat_out / max(gas_in * 10.5, 0.001) * 100"
unit = "%"

[[calculated]]
device = "boiler-1"
point = "good"
expr = "efficiency > 80"

[[calculated]]
device = "meter"
point = "per_heat"
expr = "flow / boiler-1.heat_out"

[[rules]]
id = "dry"
device = "boiler-1"
kind = "expr"
expr = "running && meter.flow < 1"
on_delay_ms = 30000
"#;

fn setup() -> (Config, Live, Calculator) {
    let config = parse(CONFIG).unwrap().config;
    let restored = Restored {
        devices: vec![(None, None); 2],
        points: config
            .devices
            .iter()
            .map(|d| vec![None; d.points.len()])
            .collect(),
        ..Restored::default()
    };
    let live = Live::restored(&config, &restored);
    let calc = Calculator::new(&config);
    (config, live, calc)
}

/// Sets point `p` of device `d` as read at `ts`.
fn read(live: &mut Live, d: usize, p: usize, v: Value, q: Quality, ts: i64) {
    let pl = &mut live.devices[d].points[p];
    pl.value = Some(v);
    pl.quality = q;
    pl.ts = ts;
}

#[test]
fn a_chain_is_evaluated_in_order_with_the_newest_time_and_the_worst_quality() {
    let (config, mut live, mut calc) = setup();
    assert_eq!(config.devices[0].points[3].id, "efficiency");
    assert!(config.devices[0].points[3].calculated);
    read(&mut live, 0, 0, Value::Float(84.0), Quality::Good, 1000);
    read(&mut live, 0, 1, Value::Float(10.0), Quality::Good, 1200);
    let out = calc.changed(&config, &mut live, 0, [0, 1]);
    let eff = &live.devices[0].points[3];
    assert_eq!(
        (eff.value.clone(), eff.quality, eff.ts),
        (Some(Value::Float(80.0)), Quality::Good, 1200)
    );
    let good = &live.devices[0].points[4];
    assert_eq!(
        (good.value.clone(), good.quality),
        (Some(Value::Bool(false)), Quality::Good)
    );
    // Both reported, efficiency first; per_heat has no flow yet: bad, no value.
    let mut rows: Vec<(usize, usize)> = out.rows.iter().map(|r| (r.device, r.point)).collect();
    rows.sort_unstable();
    assert_eq!(rows, [(0, 3), (0, 4), (1, 1)]);
    assert_eq!(live.devices[1].points[1].quality, Quality::Bad);
    assert_eq!(out.samples.len(), 2);

    // An input gone bad makes every reader bad, its value kept; good again, good again.
    read(&mut live, 0, 1, Value::Float(10.0), Quality::Bad, 2000);
    let out = calc.changed(&config, &mut live, 0, [1]);
    assert_eq!(live.devices[0].points[3].quality, Quality::Bad);
    assert_eq!(live.devices[0].points[4].quality, Quality::Bad);
    assert!(out.samples.is_empty());
    read(&mut live, 0, 1, Value::Float(8.0), Quality::Good, 3000);
    calc.changed(&config, &mut live, 0, [1]);
    let eff = &live.devices[0].points[3];
    assert_eq!(
        (eff.value.clone(), eff.quality),
        (Some(Value::Float(100.0)), Quality::Good)
    );
    assert_eq!(live.devices[0].points[4].value, Some(Value::Bool(true)));
}

#[test]
fn a_result_that_is_not_finite_is_bad_and_keeps_the_last_value() {
    let (config, mut live, mut calc) = setup();
    read(&mut live, 0, 0, Value::Float(2.0), Quality::Good, 1000);
    read(&mut live, 1, 0, Value::UInt(4), Quality::Good, 1000);
    calc.changed(&config, &mut live, 1, [0]);
    assert_eq!(live.devices[1].points[1].value, Some(Value::Float(2.0)));
    read(&mut live, 0, 0, Value::Float(0.0), Quality::Good, 2000);
    calc.changed(&config, &mut live, 0, [0]);
    let p = &live.devices[1].points[1];
    assert_eq!(
        (p.value.clone(), p.quality),
        (Some(Value::Float(2.0)), Quality::Bad)
    );
    assert_eq!(p.error.as_deref(), Some("result is inf"));
}

#[test]
fn an_expr_rule_is_told_whether_it_holds_only_with_good_inputs() {
    let (config, mut live, mut calc) = setup();
    read(&mut live, 0, 2, Value::Bool(true), Quality::Good, 1000);
    let out = calc.changed(&config, &mut live, 0, [2]);
    assert!(out.rules.is_empty(), "flow has no value yet");
    read(&mut live, 1, 0, Value::UInt(0), Quality::Good, 1100);
    let out = calc.changed(&config, &mut live, 1, [0]);
    assert_eq!(out.rules, [(0, true, 1100)]);
    read(&mut live, 1, 0, Value::UInt(0), Quality::Stale, 5000);
    let out = calc.changed(&config, &mut live, 1, [0]);
    assert!(out.rules.is_empty());
}

#[test]
fn a_result_is_rid_of_binary_noise_as_a_scaled_read_is() {
    let (config, mut live, mut calc) = setup();
    // per_heat = flow / boiler-1.heat_out: 21 / 0.7 is 30.000000000000004 in f64.
    read(&mut live, 0, 0, Value::Float(0.7), Quality::Good, 1000);
    read(&mut live, 1, 0, Value::UInt(21), Quality::Good, 1000);
    calc.changed(&config, &mut live, 1, [0]);
    assert_eq!(live.devices[1].points[1].value, Some(Value::Float(30.0)));
}
