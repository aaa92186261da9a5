//! Calculated points and `expr` rules evaluated when an input changes: which formulas a changed
//! point feeds (in evaluation order, through chains), each one's value, quality (the worst of
//! its inputs') and time (the newest input's), the result written to the live state with the
//! report decision of a read.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::config::{Config, Formula, RuleKind};
use crate::expr::Ty;
use crate::model::Row;
use crate::model::{Millis, Quality, Value};
use crate::state::{self, Live};

/// What a formula's result is for.
enum Target {
    /// A calculated point: (device, point).
    Point(usize, usize),
    /// An `expr` rule, by its index in the config's rules.
    Rule(usize),
}

/// What a round of evaluation produced, for the pipeline to pass on. The calculator keeps it
/// between rounds so its buffers are reused.
#[derive(Default)]
pub struct Outcome {
    /// Calculated points whose change must be reported (store, pushes, upstream).
    pub rows: Vec<Row>,
    /// Calculated points' good values, for the rules watching them: (device, point, value, ts).
    pub samples: Vec<(usize, usize, Value, Millis)>,
    /// `expr` rules evaluated with good inputs: (rule, holds, ts).
    pub rules: Vec<(usize, bool, Millis)>,
}

impl Outcome {
    fn clear(&mut self) {
        self.rows.clear();
        self.samples.clear();
        self.rules.clear();
    }
}

pub struct Calculator {
    /// Calculated points in evaluation order, then `expr` rules: a smaller index never reads a
    /// larger one, so evaluating in index order sees every input's new value.
    targets: Vec<(Target, Formula)>,
    /// Per device (empty when none of its points is read by a formula), per point: the
    /// targets reading it directly.
    readers: Vec<Vec<Box<[u32]>>>,
    /// Targets to evaluate this round, smallest index first.
    pending: BinaryHeap<Reverse<u32>>,
    /// Per target: the round it was last queued in, so a target is queued once a round.
    queued: Vec<u32>,
    round: u32,
    inputs: Vec<f64>,
    stack: Vec<f64>,
    out: Outcome,
}

/// The worse of two qualities: bad over stale over good.
fn worse(a: Quality, b: Quality) -> Quality {
    let rank = |q| match q {
        Quality::Good => 0,
        Quality::Stale => 1,
        Quality::Bad => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

impl Calculator {
    pub fn new(config: &Config) -> Calculator {
        let mut targets: Vec<(Target, Formula)> = (config.calculated.iter())
            .map(|c| (Target::Point(c.device, c.point), c.formula.clone()))
            .collect();
        for (i, r) in config.rules.iter().enumerate() {
            if let RuleKind::Expr(f) = &r.kind {
                targets.push((Target::Rule(i), f.clone()));
            }
        }
        let mut lists: Vec<Vec<Vec<u32>>> = vec![Vec::new(); config.devices.len()];
        for (t, (_, f)) in targets.iter().enumerate() {
            for &(d, p) in &f.inputs {
                let device = &mut lists[d];
                if device.is_empty() {
                    device.resize(config.devices[d].points.len(), Vec::new());
                }
                if !device[p].contains(&(t as u32)) {
                    device[p].push(t as u32);
                }
            }
        }
        let readers = (lists.into_iter())
            .map(|d| d.into_iter().map(Vec::into_boxed_slice).collect())
            .collect();
        Calculator {
            queued: vec![0; targets.len()],
            targets,
            readers,
            pending: BinaryHeap::new(),
            round: 0,
            inputs: Vec::new(),
            stack: Vec::new(),
            out: Outcome::default(),
        }
    }

    /// Whether any formula reads a point of `device`.
    pub fn reads(&self, device: usize) -> bool {
        self.readers.get(device).is_some_and(|d| !d.is_empty())
    }

    /// Points of `device` changed (read, failed, or turned stale): every formula they feed is
    /// evaluated, through chains, in order; what that gave.
    pub fn changed(
        &mut self,
        config: &Config,
        live: &mut Live,
        device: usize,
        points: impl IntoIterator<Item = usize>,
    ) -> &mut Outcome {
        self.queue(device, points);
        self.run(config, live)
    }

    /// The formulas fed by these points of `device` queued for the next [`Calculator::run`]
    /// (the pipeline queues a poll's points before it applies them: no copy of the list);
    /// whether any was.
    pub fn queue(&mut self, device: usize, points: impl IntoIterator<Item = usize>) -> bool {
        if !self.reads(device) {
            return false;
        }
        self.round = self.round.wrapping_add(1);
        if self.round == 0 {
            // Wrapped: a mark from 2³² rounds ago must not read as this round's.
            self.queued.fill(0);
            self.round = 1;
        }
        for p in points {
            self.queue_readers(device, p);
        }
        !self.pending.is_empty()
    }

    /// Every queued formula evaluated from the live state, through chains, in order.
    pub fn run(&mut self, config: &Config, live: &mut Live) -> &mut Outcome {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        while let Some(Reverse(t)) = self.pending.pop() {
            self.evaluate(config, live, t as usize, &mut out);
        }
        self.out = out;
        &mut self.out
    }

    fn queue_readers(&mut self, device: usize, point: usize) {
        let Some(list) = self.readers.get(device).and_then(|d| d.get(point)) else {
            return;
        };
        for &t in list {
            if self.queued[t as usize] != self.round {
                self.queued[t as usize] = self.round;
                self.pending.push(Reverse(t));
            }
        }
    }

    fn evaluate(&mut self, config: &Config, live: &mut Live, t: usize, out: &mut Outcome) {
        let (target, formula) = &self.targets[t];
        let read = read_inputs(formula, live, &mut self.inputs);
        let x = formula.program.eval(&self.inputs, &mut self.stack);
        let (device, point) = match *target {
            Target::Rule(r) => {
                if read.quality == Quality::Good && read.missing.is_none() {
                    out.rules.push((r, x != 0.0, read.ts));
                }
                return;
            }
            Target::Point(d, p) => (d, p),
        };
        let (value, quality, error) = judge(config, formula, &read, x);
        if let (Some(v), Quality::Good) = (&value, quality) {
            out.samples.push((device, point, v.clone(), read.ts));
        }
        let row = state::apply_calculated(
            config,
            live,
            (device, point),
            (value, quality, read.ts),
            error,
        );
        out.rows.extend(row);
        // Its readers follow even when only its time moved: their `ts` is their newest input's.
        self.queue_readers(device, point);
    }
}

/// What a formula's inputs are now: the worst quality, the newest time, the first without a
/// value.
struct Read {
    quality: Quality,
    ts: Millis,
    missing: Option<(usize, usize)>,
}

/// The inputs' values into `values` (NaN for none), in the program's order.
fn read_inputs(formula: &Formula, live: &Live, values: &mut Vec<f64>) -> Read {
    values.clear();
    let mut read = Read {
        quality: Quality::Good,
        ts: 0,
        missing: None,
    };
    for &(d, p) in &formula.inputs {
        let pl = &live.devices[d].points[p];
        read.quality = worse(read.quality, pl.quality);
        read.ts = read.ts.max(pl.ts);
        if let Some(x) = pl.value.as_ref().and_then(Value::as_f64) {
            values.push(x);
        } else {
            read.missing.get_or_insert((d, p));
            values.push(f64::NAN);
        }
    }
    read
}

/// A result as a point's value, quality and why it has none: an input without a value, or a
/// result that is not finite, is `bad` (the last value kept).
fn judge(
    config: &Config,
    formula: &Formula,
    read: &Read,
    x: f64,
) -> (Option<Value>, Quality, Option<String>) {
    if let Some((d, p)) = read.missing {
        let dev = &config.devices[d];
        let why = format!("input {}.{} has no value", dev.id, dev.points[p].id);
        return (None, Quality::Bad, Some(why));
    }
    if !x.is_finite() {
        return (None, Quality::Bad, Some(format!("result is {x}")));
    }
    let v = match formula.program.ty {
        Ty::Bool => Value::Bool(x != 0.0),
        // Rid of the binary noise the arithmetic adds (66.60000000000001), as a scaled read is.
        Ty::Number => Value::Float(crate::model::float::tidy(x)),
    };
    (Some(v), read.quality, None)
}

/// One formula over the live state as it is (the Configure view's preview): value, quality,
/// time and why there is no value.
pub fn evaluate_once(
    config: &Config,
    live: &Live,
    formula: &Formula,
) -> (Option<Value>, Quality, Millis, Option<String>) {
    let mut values = Vec::new();
    let read = read_inputs(formula, live, &mut values);
    let x = formula.program.eval(&values, &mut Vec::new());
    let (v, q, why) = judge(config, formula, &read, x);
    (v, q, read.ts, why)
}

#[cfg(test)]
mod tests;
