//! The rule engine: thresholds with hysteresis and on-delay, equals, rate, stale, and the
//! built-in online/offline and abnormal-data alarms. Pure: it is given the time, so every rule
//! is testable to the millisecond.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

mod builtin;

use super::{AlarmOp, Draft, EventState, EventType};
use crate::config::{Config, RuleKind};
use crate::modbus::bus::PointError;
use crate::model::{Millis, Value};

struct RuleState {
    /// The alarm is raised (persisted: an alarm active before a restart stays raised).
    active: bool,
    /// Since when the raise condition has held, waiting out `for_ms`.
    pending_since: Option<Instant>,
    pending_value: Option<f64>,
    /// Since when the clear condition has held while raised, waiting out `clear_for_ms`.
    clearing_since: Option<Instant>,
    clearing_value: Option<f64>,
    /// `equals`: whether the last value was on target, so it fires once per arrival.
    on_target: bool,
    /// `rate`: the previous good sample.
    last: Option<(f64, Instant)>,
    /// `stale`: last change of value.
    last_change: Instant,
    last_value: Option<f64>,
}

pub struct Engine {
    rules: Vec<crate::config::Rule>,
    state: Vec<RuleState>,
    /// The earliest instant `tick` can find an on-delay, off-delay or `stale` rule run out
    /// (`None`: none is waiting). Worked out on each pass and brought forward as samples
    /// change a rule's state: walking every rule ten times a second was 3 % of the gateway's
    /// time on the store bench in session 28's profile, with nothing due.
    next_tick: Option<Instant>,
    /// The rules on each point that has any; `rules_at` says which entry is a point's.
    by_point: Vec<Vec<usize>>,
    /// Raised built-in alarms, by key.
    raised: HashSet<String>,
    /// Per device and point: a built-in abnormal alarm is raised, and the point's rules (0:
    /// none, else its entry in `by_point` plus one). The hot path (a good value on a point with
    /// neither: nearly every sample) checks these two and stops, with no key built and nothing
    /// hashed; a point with rules finds them by index (a map keyed by device and point, taken
    /// out and put back per sample, hashed twice: 0.6 % of the gateway's CPU, session 30).
    abnormal: Vec<Vec<bool>>,
    rules_at: Vec<Vec<u32>>,
    /// Per device: a line-fault alarm (`link:DEV`) is raised, and the good polls in a row since
    /// the last fault.
    link_raised: Vec<bool>,
    link_good: Vec<u32>,
    /// Devices seen online since start (the first `online` is news only after an offline).
    online: Vec<Option<bool>>,
    /// Devices that went offline because their bus did: their return names the bus.
    offline_with_bus: Vec<bool>,
    device_ids: Vec<String>,
    /// Each device's bus, and the buses' names (a bus's own alarm: `bus_offline`).
    device_bus: Vec<usize>,
    bus_names: Vec<String>,
    point_ids: Vec<Vec<String>>,
    min_max: Vec<Vec<(Option<f64>, Option<f64>)>>,
}

pub fn offline_key(device: &str) -> String {
    format!("offline:{device}")
}

pub fn bus_key(bus: &str) -> String {
    format!("bus:{bus}")
}

pub fn abnormal_key(device: &str, point: &str) -> String {
    format!("abnormal:{device}:{point}")
}

pub fn link_key(device: &str) -> String {
    format!("link:{device}")
}

/// Good polls in a row that clear a line-fault alarm: one good answer between bad ones is not
/// a fixed line.
const LINK_CLEAR_AFTER: u32 = 3;

impl Engine {
    /// `active_alarms`: the keys of alarms active in the store, so a restart does not raise
    /// them again.
    pub fn new(config: &Config, active_alarms: &HashSet<String>, now: Instant) -> Engine {
        let mut rules_at: Vec<Vec<u32>> = config
            .devices
            .iter()
            .map(|d| vec![0; d.points.len()])
            .collect();
        let mut by_point: Vec<Vec<usize>> = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            // An `expr` rule watches no one point: the calculator hands it its outcome.
            let Some(at) = r.point.and_then(|p| rules_at.get_mut(r.device)?.get_mut(p)) else {
                continue;
            };
            if *at == 0 {
                by_point.push(Vec::new());
                *at = u32::try_from(by_point.len()).unwrap_or(u32::MAX);
            }
            by_point[*at as usize - 1].push(i);
        }
        Engine {
            state: config
                .rules
                .iter()
                .map(|r| RuleState {
                    active: active_alarms.contains(&r.id),
                    pending_since: None,
                    pending_value: None,
                    clearing_since: None,
                    clearing_value: None,
                    on_target: false,
                    last: None,
                    last_change: now,
                    last_value: None,
                })
                .collect(),
            rules: config.rules.clone(),
            next_tick: Some(now),
            abnormal: config
                .devices
                .iter()
                .map(|d| {
                    d.points
                        .iter()
                        .map(|p| active_alarms.contains(&abnormal_key(&d.id, &p.id)))
                        .collect()
                })
                .collect(),
            rules_at,
            by_point,
            link_raised: config
                .devices
                .iter()
                .map(|d| active_alarms.contains(&link_key(&d.id)))
                .collect(),
            link_good: vec![0; config.devices.len()],
            raised: active_alarms.clone(),
            online: vec![None; config.devices.len()],
            offline_with_bus: vec![false; config.devices.len()],
            device_ids: config.devices.iter().map(|d| d.id.clone()).collect(),
            device_bus: config.devices.iter().map(|d| d.bus).collect(),
            bus_names: config.buses.iter().map(|b| b.name.clone()).collect(),
            point_ids: config
                .devices
                .iter()
                .map(|d| d.points.iter().map(|p| p.id.clone()).collect())
                .collect(),
            min_max: config
                .devices
                .iter()
                .map(|d| d.points.iter().map(|p| (p.min, p.max)).collect())
                .collect(),
        }
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// One point's poll result.
    pub fn on_sample(
        &mut self,
        device: usize,
        point: usize,
        result: &Result<Value, PointError>,
        ts: Millis,
        now: Instant,
        out: &mut Vec<Draft>,
    ) {
        self.builtin_abnormal(device, point, result, ts, now, out);
        let at = self.rules_at[device][point] as usize;
        if at == 0 {
            return;
        }
        let Ok(v) = result else { return };
        let Some(x) = v.as_f64() else { return };
        // Taken out and put back: evaluating needs the engine mutably.
        let rules = std::mem::take(&mut self.by_point[at - 1]);
        for &r in &rules {
            self.evaluate(r, x, v, ts, now, out);
            self.arm(r);
        }
        self.by_point[at - 1] = rules;
    }

    /// A draft for rule `r`; `when` is the sample's wall time and read instant.
    fn draft(
        &self,
        r: usize,
        kind: EventType,
        state: EventState,
        value: Option<Value>,
        when: (Millis, Instant),
        message: String,
    ) -> Draft {
        let (ts, now) = when;
        let rule = &self.rules[r];
        let alarm = match state {
            EventState::Active => Some(AlarmOp::Raise(rule.id.clone())),
            EventState::Cleared => Some(AlarmOp::Clear(rule.id.clone())),
            EventState::Info => None,
        };
        Draft {
            device: rule.device,
            point: rule.point,
            kind,
            // A clear keeps its alarm's priority: whoever saw the raise must see the clear.
            priority: rule.priority,
            value,
            message,
            state,
            ts,
            alarm,
            at: now,
        }
    }

    fn message(&self, r: usize, default: &str) -> String {
        let m = &self.rules[r].message;
        if m.is_empty() {
            default.to_string()
        } else {
            m.clone()
        }
    }

    fn evaluate(
        &mut self,
        r: usize,
        x: f64,
        v: &Value,
        ts: Millis,
        now: Instant,
        out: &mut Vec<Draft>,
    ) {
        let st = &mut self.state[r];
        // Stale bookkeeping for every rule kind is cheap; only `stale` rules read it.
        if st.last_value != Some(x) {
            st.last_change = now;
            st.last_value = Some(x);
        }
        // Only the kind is needed, and it is plain numbers but for `expr`, which watches no
        // point: no clone of the rule's strings on every sample.
        let kind = match &self.rules[r].kind {
            RuleKind::Expr(_) => return,
            k => k.clone(),
        };
        let (raise, clear) = match kind {
            RuleKind::Above { threshold, clear } => (x > threshold, x <= clear),
            RuleKind::Below { threshold, clear } => (x < threshold, x >= clear),
            RuleKind::Outside { low, high, clear } => {
                let margin = clear.unwrap_or(0.0);
                (x < low || x > high, x >= low + margin && x <= high - margin)
            }
            RuleKind::Equals { threshold } => {
                let on = (x - threshold).abs() <= f64::EPSILON * threshold.abs().max(1.0);
                let arrived = on && !st.on_target;
                st.on_target = on;
                if arrived {
                    let msg = self.message(r, &format!("reached {threshold}"));
                    out.push(self.draft(
                        r,
                        EventType::DataPointReached,
                        EventState::Info,
                        Some(v.clone()),
                        (ts, now),
                        msg,
                    ));
                }
                return;
            }
            RuleKind::Rate { per_s } => return self.rate(r, per_s, (x, v), (ts, now), out),
            RuleKind::Expr(_) => return,
            RuleKind::Stale => {
                if st.active {
                    st.active = false;
                    out.push(self.draft(
                        r,
                        EventType::DeviceAbnormal,
                        EventState::Cleared,
                        Some(v.clone()),
                        (ts, now),
                        "stale: fresh data again".into(),
                    ));
                }
                return;
            }
        };
        self.threshold(r, raise, clear, (x, Some(v)), (ts, now), out);
    }

    /// An `expr` rule's expression evaluated with good inputs: whether it holds. Raised after
    /// `on_delay_ms`, cleared once it has not held for `clear_for_ms`; its events carry no
    /// value (no one point is its subject).
    pub fn on_expr(
        &mut self,
        r: usize,
        holds: bool,
        ts: Millis,
        now: Instant,
        out: &mut Vec<Draft>,
    ) {
        self.threshold(
            r,
            holds,
            !holds,
            (f64::from(u8::from(holds)), None),
            (ts, now),
            out,
        );
        self.arm(r);
    }

    /// Rule `r`'s state just changed: `tick` looks no later than when it runs out.
    fn arm(&mut self, r: usize) {
        if let Some(due) = tick_due(&self.rules[r], &self.state[r]) {
            self.next_tick = Some(self.next_tick.map_or(due, |t| t.min(due)));
        }
    }

    /// `rate`: raised when the value moves faster than `per_s` between two samples, cleared
    /// when it moves within it again.
    fn rate(
        &mut self,
        r: usize,
        per_s: f64,
        (x, v): (f64, &Value),
        (ts, now): (Millis, Instant),
        out: &mut Vec<Draft>,
    ) {
        let st = &mut self.state[r];
        let prev = st.last.replace((x, now));
        let Some((x0, t0)) = prev else { return };
        let dt = now.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let rate = (x - x0).abs() / dt;
        if rate > per_s && !st.active {
            st.active = true;
            let msg = format!(
                "{} (rate_of_change {rate:.3}/s > {per_s}/s)",
                self.message(r, "value changes too fast")
            );
            out.push(self.draft(
                r,
                EventType::DeviceAbnormal,
                EventState::Active,
                Some(v.clone()),
                (ts, now),
                msg,
            ));
        } else if rate <= per_s && st.active {
            st.active = false;
            out.push(self.draft(
                r,
                EventType::DeviceAbnormal,
                EventState::Cleared,
                Some(v.clone()),
                (ts, now),
                "rate_of_change back within limit".into(),
            ));
        }
    }

    /// Above, below, outside: raised once the condition held `for_ms` (a shorter spike raises
    /// nothing), cleared once the value has been past the hysteresis for `clear_for_ms` (a
    /// shorter dip clears nothing).
    fn threshold(
        &mut self,
        r: usize,
        raise: bool,
        clear: bool,
        (x, v): (f64, Option<&Value>),
        (ts, now): (Millis, Instant),
        out: &mut Vec<Draft>,
    ) {
        let for_delay = Duration::from_millis(self.rules[r].for_ms);
        let st = &mut self.state[r];
        if !st.active {
            if raise {
                let since = *st.pending_since.get_or_insert(now);
                st.pending_value = Some(x);
                if now.duration_since(since) >= for_delay {
                    st.active = true;
                    st.pending_since = None;
                    let msg = self.message(r, "threshold exceeded");
                    out.push(self.draft(
                        r,
                        EventType::ThresholdExceeded,
                        EventState::Active,
                        v.cloned(),
                        (ts, now),
                        msg,
                    ));
                }
            } else {
                // A spike shorter than `for_ms` raises nothing.
                st.pending_since = None;
            }
        } else if clear {
            let clear_delay = Duration::from_millis(self.rules[r].clear_for_ms);
            let since = *st.clearing_since.get_or_insert(now);
            st.clearing_value = Some(x);
            if now.duration_since(since) >= clear_delay {
                out.push(self.cleared(r, v.cloned(), (ts, now)));
            }
        } else {
            st.clearing_since = None;
        }
    }

    /// A threshold alarm clears: its state reset and the `threshold_cleared` draft.
    fn cleared(&mut self, r: usize, value: Option<Value>, (ts, now): (Millis, Instant)) -> Draft {
        let st = &mut self.state[r];
        st.active = false;
        st.pending_since = None;
        st.clearing_since = None;
        let msg = format!("{}: cleared", self.message(r, "threshold"));
        self.draft(
            r,
            EventType::ThresholdCleared,
            EventState::Cleared,
            value,
            (ts, now),
            msg,
        )
    }

    /// Time-driven rules: an on-delay that ran out with no new sample, and staleness. Returns
    /// the (device, point) of points that just went stale.
    pub fn tick(&mut self, ts: Millis, now: Instant, out: &mut Vec<Draft>) -> Vec<(usize, usize)> {
        let mut stale = Vec::new();
        if self.next_tick.is_none_or(|t| now < t) {
            return stale;
        }
        for r in 0..self.rules.len() {
            let rule = &self.rules[r];
            let for_delay = Duration::from_millis(rule.for_ms);
            let st = &self.state[r];
            match rule.kind {
                RuleKind::Stale => {
                    // A value that has not changed for `for_ms`, whether because no good sample
                    // came or because it came frozen (a change needs a good sample, so this
                    // covers both).
                    let frozen = now.duration_since(st.last_change);
                    if !st.active && frozen >= for_delay {
                        let msg = format!(
                            "{} (stale: no fresh value for {} ms)",
                            self.message(r, "point is stale"),
                            rule.for_ms
                        );
                        let d = self.draft(
                            r,
                            EventType::DeviceAbnormal,
                            EventState::Active,
                            st.last_value.map(Value::Float),
                            (ts, now),
                            msg,
                        );
                        stale.extend(rule.point.map(|p| (rule.device, p)));
                        self.state[r].active = true;
                        out.push(d);
                    }
                }
                RuleKind::Above { .. }
                | RuleKind::Below { .. }
                | RuleKind::Outside { .. }
                | RuleKind::Expr(_) => {
                    // An `expr` rule's events carry no value.
                    let valued = |x: Option<f64>| x.filter(|_| rule.point.is_some());
                    // An off-delay that ran out with no new sample.
                    if let (true, Some(since)) = (st.active, st.clearing_since) {
                        if now.duration_since(since) >= Duration::from_millis(rule.clear_for_ms) {
                            let x = valued(st.clearing_value);
                            let d = self.cleared(r, x.map(Value::Float), (ts, now));
                            out.push(d);
                        }
                        continue;
                    }
                    if let (false, Some(since)) = (st.active, st.pending_since) {
                        if now.duration_since(since) >= for_delay {
                            let x = valued(st.pending_value);
                            let msg = self.message(r, "threshold exceeded");
                            let d = self.draft(
                                r,
                                EventType::ThresholdExceeded,
                                EventState::Active,
                                x.map(Value::Float),
                                (ts, now),
                                msg,
                            );
                            let st = &mut self.state[r];
                            st.active = true;
                            st.pending_since = None;
                            out.push(d);
                        }
                    }
                }
                _ => {}
            }
        }
        self.next_tick = (0..self.rules.len())
            .filter_map(|r| tick_due(&self.rules[r], &self.state[r]))
            .min();
        stale
    }
}

/// When `tick` would act on a rule in this state: its on-delay or off-delay running out, or
/// a `stale` rule's value staying unchanged for `for_ms`; `None` when it would not.
fn tick_due(rule: &crate::config::Rule, st: &RuleState) -> Option<Instant> {
    let after = |since: Instant, ms: u64| since.checked_add(Duration::from_millis(ms));
    match rule.kind {
        RuleKind::Stale if !st.active => after(st.last_change, rule.for_ms),
        RuleKind::Above { .. }
        | RuleKind::Below { .. }
        | RuleKind::Outside { .. }
        | RuleKind::Expr(_) => {
            if st.active {
                st.clearing_since.and_then(|s| after(s, rule.clear_for_ms))
            } else {
                st.pending_since.and_then(|s| after(s, rule.for_ms))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
