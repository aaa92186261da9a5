//! `[[calculated]]` points and the expressions of `expr` rules: names resolved, cycles between
//! calculated points named, types checked in evaluation order; each problem at its key, the
//! expression's column in the message.

use std::collections::HashMap;
use std::time::Duration;

use super::super::raw::RawCalculated;
use super::{DataType, Device, Format, KeyPath, Point, Table, Validator};
use crate::config::calculated::{self, Resolved};
use crate::config::{Calculated, Formula, Names};
use crate::expr::{Parsed, Ty};

/// One entry read so far: where it is, the point it became, its text.
struct Entry {
    path: KeyPath,
    device: usize,
    point: usize,
}

impl Validator {
    /// Each entry becomes a point of its device, then every expression is read against all
    /// points (calculated ones too) and compiled in an order where an input comes first.
    pub(super) fn calculated(
        &mut self,
        raw: Vec<RawCalculated>,
        devices: &mut [Device],
    ) -> Vec<Calculated> {
        let (entries, texts) = self.calculated_points(raw, devices);
        if entries.is_empty() {
            return Vec::new();
        }
        let names = Names::new(devices);
        let parsed: Vec<Option<Resolved>> = entries
            .iter()
            .zip(&texts)
            .map(|(e, text)| self.parse_formula(&names, e.device, text, &e.path.key("expr")))
            .collect();
        let order = self.evaluation_order(devices, &entries, &parsed);
        let mut types: HashMap<(usize, usize), Ty> = HashMap::new();
        let mut out = Vec::new();
        for i in order {
            let (e, text) = (&entries[i], &texts[i]);
            let Some((p, inputs)) = &parsed[i] else {
                continue;
            };
            let ty_of = |k: usize| {
                let input = inputs[k];
                (types.get(&input).copied())
                    .unwrap_or_else(|| names.ty(input).unwrap_or(Ty::Number))
            };
            let Some(formula) = self.compile_formula(p, inputs, &ty_of, text, &e.path.key("expr"))
            else {
                continue;
            };
            types.insert((e.device, e.point), formula.program.ty);
            out.push(Calculated {
                device: e.device,
                point: e.point,
                formula,
            });
        }
        for c in &out {
            if c.formula.program.ty == Ty::Bool {
                devices[c.device].points[c.point].format.data_type = DataType::Bool;
            }
        }
        out
    }

    /// Each entry checked and made a point of its device (typed once its expression is).
    fn calculated_points(
        &mut self,
        raw: Vec<RawCalculated>,
        devices: &mut [Device],
    ) -> (Vec<Entry>, Vec<String>) {
        let mut entries = Vec::new();
        let mut texts = Vec::new();
        for (i, c) in raw.into_iter().enumerate() {
            let p = KeyPath::default().key("calculated").index(i);
            let missing = [
                ("device", c.device.is_empty()),
                ("point", c.point.is_empty()),
                ("expr", c.expr.trim().is_empty()),
            ]
            .map(|(key, empty)| self.required(&p.key(key), empty));
            if missing.contains(&true) {
                continue;
            }
            let Some(d) = devices.iter().position(|d| d.id == c.device) else {
                self.err(&p.key("device"), format!("unknown device `{}`", c.device));
                continue;
            };
            let dev = &mut devices[d];
            if dev.points.iter().any(|pt| pt.id == c.point) {
                self.err(
                    &p.key("point"),
                    format!("device `{}` already has a point `{}`", dev.id, c.point),
                );
                continue;
            }
            dev.points.push(Point {
                id: c.point,
                address: 0,
                format: Format::raw(Table::Holding, DataType::F64),
                unit: c.unit,
                deadband: 0.0,
                report_every: Duration::from_secs(60),
                min: None,
                max: None,
                writable: false,
                poll_interval: None,
                calculated: true,
            });
            entries.push(Entry {
                path: p,
                device: d,
                point: dev.points.len() - 1,
            });
            texts.push(c.expr);
        }
        (entries, texts)
    }

    /// `text` read with the names of device `own`; every problem at `path`.
    pub(super) fn parse_formula(
        &mut self,
        names: &Names<'_>,
        own: usize,
        text: &str,
        path: &KeyPath,
    ) -> Option<Resolved> {
        names.parse(own, text).map_err(|e| self.errs(path, e)).ok()
    }

    /// Compiled, or every type problem at `path`.
    pub(super) fn compile_formula(
        &mut self,
        parsed: &Parsed,
        inputs: &[(usize, usize)],
        ty_of: &dyn Fn(usize) -> Ty,
        text: &str,
        path: &KeyPath,
    ) -> Option<Formula> {
        calculated::formula(parsed, inputs, ty_of, text)
            .map_err(|e| self.errs(path, e))
            .ok()
    }

    fn errs(&mut self, path: &KeyPath, messages: Vec<String>) {
        for m in messages {
            self.err(path, m);
        }
    }

    /// The entries in an order where every calculated input comes before what reads it;
    /// those in a cycle (or reading one) are named and left out.
    fn evaluation_order(
        &mut self,
        devices: &[Device],
        entries: &[Entry],
        parsed: &[Option<Resolved>],
    ) -> Vec<usize> {
        let index: HashMap<(usize, usize), usize> = (entries.iter().enumerate())
            .map(|(i, e)| ((e.device, e.point), i))
            .collect();
        let reads: Vec<Vec<usize>> = parsed
            .iter()
            .map(|p| {
                let inputs = p.as_ref().map_or(&[][..], |(_, inputs)| &inputs[..]);
                let mut r: Vec<usize> = inputs
                    .iter()
                    .filter_map(|k| index.get(k).copied())
                    .collect();
                r.sort_unstable();
                r.dedup();
                r
            })
            .collect();
        // Kahn: an entry is ready once everything it reads is placed.
        let mut waiting: Vec<usize> = reads.iter().map(Vec::len).collect();
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); entries.len()];
        for (i, r) in reads.iter().enumerate() {
            for &j in r {
                readers[j].push(i);
            }
        }
        let mut order: Vec<usize> = (0..entries.len()).filter(|&i| waiting[i] == 0).collect();
        let mut next = 0;
        while next < order.len() {
            for &k in &readers[order[next]] {
                waiting[k] -= 1;
                if waiting[k] == 0 {
                    order.push(k);
                }
            }
            next += 1;
        }
        let name = |i: usize| {
            let e = &entries[i];
            let d = &devices[e.device];
            format!("{}.{}", d.id, d.points[e.point].id)
        };
        for i in (0..entries.len()).filter(|&i| waiting[i] > 0) {
            let message = match cycle_through(i, &reads) {
                Some(cycle) => {
                    let path: Vec<String> = cycle.into_iter().map(name).collect();
                    format!(
                        "calculated points read each other in a cycle: {}",
                        path.join(" → ")
                    )
                }
                None => "reads a calculated point that is in a cycle".to_string(),
            };
            self.err(&entries[i].path.key("expr"), message);
        }
        order
    }
}

/// A way from `start` back to itself along `reads`, as the entries passed (start first and
/// last); `None` when `start` only leads into a cycle elsewhere.
fn cycle_through(start: usize, reads: &[Vec<usize>]) -> Option<Vec<usize>> {
    let mut from: Vec<Option<usize>> = vec![None; reads.len()];
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(i) = queue.pop_front() {
        for &j in &reads[i] {
            if j == start {
                // Back along the way it was found: i, …, start (start has no predecessor).
                let mut way = vec![i];
                let mut k = i;
                while let Some(prev) = from[k] {
                    way.push(prev);
                    k = prev;
                }
                way.reverse();
                way.push(start);
                return Some(way);
            }
            if from[j].is_none() && j != start {
                from[j] = Some(i);
                queue.push_back(j);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ConfigError, DataType, RuleKind};

    const HEAD: &str = "[gateway]\nid = \"t\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n\
        [[devices]]\nid = \"boiler-1\"\nbus = \"b\"\nunit = 1\n\
        points = [\n  { id = \"heat\", table = \"input\", address = 0, type = \"f32\" },\n  { id = \"gas\", table = \"input\", address = 2, type = \"f32\" },\n  { id = \"on\", table = \"coil\", address = 0, type = \"bool\" },\n  { id = \"mode\", table = \"holding\", address = 4, type = \"string\", length = 4 },\n]\n";

    fn calc(device: &str, point: &str, expr: &str) -> String {
        format!("[[calculated]]\ndevice = \"{device}\"\npoint = \"{point}\"\nexpr = \"{expr}\"\n")
    }

    /// Every problem of a config, as (key path, line, message).
    fn problems(tail: &str) -> Vec<(String, Option<usize>, String)> {
        match parse(&format!("{HEAD}{tail}")) {
            Err(ConfigError::Invalid(p)) => {
                p.into_iter().map(|p| (p.path, p.line, p.message)).collect()
            }
            Ok(_) => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_problem_is_named_at_its_key_and_line_in_one_pass() {
        let tail = [
            calc("boiler-1", "a", "heat + gaz"),
            calc("boiler-1", "b", "on + 1"),
            calc("boiler-1", "c", "heat / (1 - 1)"),
            calc("boiler-1", "d", "e * 2"),
            calc("boiler-1", "e", "boiler-1.d + 1"),
            calc("boiler-1", "f", "mode * 2"),
            calc("nope", "g", "1"),
            calc("boiler-1", "heat", "1"),
            "[[calculated]]\ndevice = \"boiler-1\"\npoint = \"h\"\n".to_string(),
            "[[rules]]\nid = \"r\"\ndevice = \"boiler-1\"\nkind = \"expr\"\nexpr = \"heat * 2\"\n".to_string(),
            "[[rules]]\nid = \"s\"\ndevice = \"boiler-1\"\npoint = \"heat\"\nkind = \"above\"\nthreshold = 1.0\non_delay_ms = 5\n".to_string(),
        ]
        .concat();
        let found = problems(&tail);
        let text = format!("{HEAD}{tail}");
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        for (path, needle, message) in [
            ("calculated[0].expr", "heat + gaz", "unknown name `gaz` (at column 8)"),
            ("calculated[1].expr", "on + 1", "`+` needs a number, this is true/false (at column 1)"),
            ("calculated[2].expr", "heat / (1 - 1)", "division by zero: the right side of `/` is always 0 (at column 8)"),
            ("calculated[3].expr", "e * 2", "calculated points read each other in a cycle: boiler-1.d → boiler-1.e → boiler-1.d"),
            ("calculated[4].expr", "boiler-1.d + 1", "calculated points read each other in a cycle: boiler-1.e → boiler-1.d → boiler-1.e"),
            ("calculated[5].expr", "mode * 2", "`mode` is a string point: an expression reads numbers and true/false"),
            ("calculated[6].device", "\"nope\"", "unknown device `nope`"),
            ("calculated[7].point", "point = \"heat\"", "device `boiler-1` already has a point `heat`"),
            ("calculated[8].expr", "point = \"h\"", "required: missing or empty"),
            ("rules[0].expr", "heat * 2", "an `expr` rule needs a true/false expression (a comparison), this is a number"),
            ("rules[1].on_delay_ms", "on_delay_ms", "only applies to kind = \"expr\" (the others watch one point, on-delay `for_ms`)"),
        ] {
            let hit = found.iter().find(|(p, _, _)| p == path);
            let Some((_, line, msg)) = hit else {
                panic!("{path} not in {found:#?}");
            };
            assert_eq!(msg, message, "{path}");
            // A missing key is reported at its table's line.
            if path != "calculated[8].expr" {
                assert_eq!(*line, line_of(needle), "{path}");
            }
        }
        assert_eq!(found.len(), 11, "{found:#?}");
    }

    #[test]
    fn a_good_config_orders_chains_types_points_and_builds_expr_rules() {
        let tail = [
            calc("boiler-1", "ok", "eff > 80 && on"),
            calc("boiler-1", "eff", "heat / max(gas * 10.5, 0.001) * 100"),
            "[[rules]]\nid = \"dry\"\ndevice = \"boiler-1\"\nkind = \"expr\"\nexpr = \"on && !ok\"\non_delay_ms = 30000\nclear_for_ms = 5000\n".to_string(),
        ]
        .concat();
        let c = parse(&format!("{HEAD}{tail}")).unwrap().config;
        let points: Vec<(&str, bool, DataType)> = (c.devices[0].points.iter())
            .map(|p| (p.id.as_str(), p.calculated, p.format.data_type))
            .collect();
        assert_eq!(
            &points[4..],
            [("ok", true, DataType::Bool), ("eff", true, DataType::F64)]
        );
        // `eff` is evaluated before `ok`, which reads it.
        let order: Vec<usize> = c.calculated.iter().map(|k| k.point).collect();
        assert_eq!(order, [5, 4]);
        let r = &c.rules[0];
        assert_eq!((r.point, r.for_ms, r.clear_for_ms), (None, 30_000, 5000));
        let RuleKind::Expr(f) = &r.kind else {
            panic!("{:?}", r.kind)
        };
        assert_eq!(f.inputs, [(0, 2), (0, 4)]);
    }
}
