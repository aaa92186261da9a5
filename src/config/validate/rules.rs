//! Rules: each checked against the device and point it watches.

use std::collections::{HashMap, HashSet};

use super::{DataType, Device, KeyPath, Priority, RawRule, Rule, RuleKind, Validator};
use crate::config::Names;
use crate::expr::Ty;

impl Validator {
    pub(super) fn rules(&mut self, raw: Vec<RawRule>, devices: &[Device]) -> Vec<Rule> {
        let mut seen = HashSet::new();
        let by_id: HashMap<&str, usize> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i))
            .collect();
        let mut out = Vec::new();
        // Built only for a config with `expr` rules: a map of every point's full name.
        let mut names = None;
        for (i, r) in raw.into_iter().enumerate() {
            let p = KeyPath::default().key("rules").index(i);
            if self.required(&p.key("id"), r.id.is_empty()) {
            } else if !seen.insert(r.id.clone()) {
                self.err(&p.key("id"), format!("duplicate rule `{}`", r.id));
            }
            let Some(&device) = by_id.get(r.device.as_str()) else {
                if !self.required(&p.key("device"), r.device.is_empty()) {
                    self.err(&p.key("device"), format!("unknown device `{}`", r.device));
                }
                continue;
            };
            if r.kind == "expr" {
                let names = names.get_or_insert_with(|| Names::new(devices));
                out.extend(self.expr_rule(&p, r, device, names));
                continue;
            }
            for (key, given) in [
                ("expr", !r.expr.is_empty()),
                ("on_delay_ms", r.on_delay_ms.is_some()),
            ] {
                if given {
                    self.err(&p.key(key), "only applies to kind = \"expr\" (the others watch one point, on-delay `for_ms`)");
                }
            }
            let Some(point) = devices[device]
                .points
                .iter()
                .position(|pt| pt.id == r.point)
            else {
                if !self.required(&p.key("point"), r.point.is_empty()) {
                    self.err(
                        &p.key("point"),
                        format!("device `{}` has no point `{}`", r.device, r.point),
                    );
                }
                continue;
            };
            self.rule_numbers(&p, &r, &devices[device].points[point]);
            if self.required(&p.key("kind"), r.kind.is_empty()) {
                continue;
            }
            let Some(kind) = self.rule_kind(&p, &r) else {
                continue;
            };
            let priority = self.priority(&p, r.priority.as_deref());
            out.push(Rule {
                id: r.id,
                device,
                point: Some(point),
                kind,
                for_ms: self.int(&p.key("for_ms"), r.for_ms, 0, 0, 86_400_000) as u64,
                clear_for_ms: self.int(&p.key("clear_for_ms"), r.clear_for_ms, 0, 0, 86_400_000)
                    as u64,
                priority,
                message: r.message,
            });
        }
        out
    }

    /// A rule's numbers are finite, and a rule comparing numbers watches a number.
    fn rule_numbers(&mut self, p: &KeyPath, r: &RawRule, pt: &crate::config::Point) {
        // Every number of a rule must be finite: `threshold = nan` never compares true, and
        // `inf` never false.
        for (key, x) in r.numbers() {
            if x.is_some_and(|x| !x.is_finite()) {
                self.err(&p.key(key), "must be a finite number");
            }
        }
        // Only `stale` watches a point of any type; the others compare numbers, which a
        // string point never has: such a rule could never fire.
        if pt.format.data_type == DataType::String && r.kind != "stale" {
            self.err(
            &p.key("kind"),
            format!(
                "`{}` compares numbers, but point `{}` is a string: it could never fire (only `stale` watches a string)",
                r.kind, r.point
            ),
        );
        }
    }

    fn priority(&mut self, p: &KeyPath, name: Option<&str>) -> Priority {
        let name = name.unwrap_or("normal");
        Priority::parse(name).unwrap_or_else(|| {
            self.err(
                &p.key("priority"),
                format!("unknown priority `{name}` (expected emergency, high or normal)"),
            );
            Priority::Normal
        })
    }

    /// `kind = "expr"`: a true/false expression over the points it names, on the device it
    /// reports under; no point, no numbers of its own.
    fn expr_rule(
        &mut self,
        p: &KeyPath,
        r: RawRule,
        device: usize,
        names: &Names<'_>,
    ) -> Option<Rule> {
        if !r.point.is_empty() {
            self.err(
                &p.key("point"),
                "an `expr` rule has no point: its expression names the points it watches",
            );
        }
        for (key, x) in r.numbers() {
            if x.is_some() {
                self.err(&p.key(key), "does not apply to kind = \"expr\"");
            }
        }
        if r.for_ms.is_some() && r.on_delay_ms.is_some() {
            self.err(&p.key("for_ms"), "give on_delay_ms or for_ms, not both");
        }
        let path = p.key("expr");
        if self.required(&path, r.expr.trim().is_empty()) {
            return None;
        }
        let (parsed, inputs) = self.parse_formula(names, device, &r.expr, &path)?;
        let ty_of = |k: usize| names.ty(inputs[k]).unwrap_or(Ty::Number);
        let formula = self.compile_formula(&parsed, &inputs, &ty_of, &r.expr, &path)?;
        if formula.program.ty != Ty::Bool {
            self.err(
                &path,
                "an `expr` rule needs a true/false expression (a comparison), this is a number",
            );
            return None;
        }
        let (delay_key, delay) = match r.on_delay_ms {
            Some(ms) => ("on_delay_ms", Some(ms)),
            None => ("for_ms", r.for_ms),
        };
        Some(Rule {
            priority: self.priority(p, r.priority.as_deref()),
            for_ms: self.int(&p.key(delay_key), delay, 0, 0, 86_400_000) as u64,
            clear_for_ms: self.int(&p.key("clear_for_ms"), r.clear_for_ms, 0, 0, 86_400_000) as u64,
            id: r.id,
            device,
            point: None,
            kind: RuleKind::Expr(formula),
            message: r.message,
        })
    }

    /// The rule's kind with the numbers it needs, each checked; `None` for an unknown kind.
    fn rule_kind(&mut self, p: &KeyPath, r: &RawRule) -> Option<RuleKind> {
        let need = |v: &mut Self, x: Option<f64>, key: &str| -> f64 {
            x.unwrap_or_else(|| {
                v.err(p, format!("kind = \"{}\" needs {key}", r.kind));
                0.0
            })
        };
        let kind = match r.kind.as_str() {
            "above" => {
                let threshold = need(self, r.threshold, "threshold");
                let clear = r.clear.unwrap_or(threshold);
                if clear > threshold {
                    self.err(
                        &p.key("clear"),
                        "for `above`, clear must not be above threshold",
                    );
                }
                RuleKind::Above { threshold, clear }
            }
            "below" => {
                let threshold = need(self, r.threshold, "threshold");
                let clear = r.clear.unwrap_or(threshold);
                if clear < threshold {
                    self.err(
                        &p.key("clear"),
                        "for `below`, clear must not be below threshold",
                    );
                }
                RuleKind::Below { threshold, clear }
            }
            "outside" => {
                let low = need(self, r.low, "low");
                let high = need(self, r.high, "high");
                if low >= high {
                    self.err(&p.key("low"), "low must be below high");
                }
                RuleKind::Outside {
                    low,
                    high,
                    clear: r.clear,
                }
            }
            "equals" => RuleKind::Equals {
                threshold: need(self, r.threshold, "threshold"),
            },
            "rate" => {
                let per_s = need(self, r.per_s, "per_s");
                // A change of at least a negative rate is every sample: raised at once,
                // for ever.
                if per_s <= 0.0 {
                    self.err(&p.key("per_s"), "must be above 0");
                }
                RuleKind::Rate { per_s }
            }
            "stale" => {
                if r.for_ms.is_none() {
                    self.err(p, "kind = \"stale\" needs for_ms");
                }
                RuleKind::Stale
            }
            other => {
                self.err(
                &p.key("kind"),
                format!("unknown rule kind `{other}` (expected above, below, outside, equals, rate, stale or expr)"),
            );
                return None;
            }
        };
        // Only a threshold alarm has a clear condition to hold: elsewhere the key would be
        // silently ignored.
        let thresholds = matches!(
            kind,
            RuleKind::Above { .. } | RuleKind::Below { .. } | RuleKind::Outside { .. }
        );
        if r.clear_for_ms.is_some() && !thresholds {
            self.err(
                &p.key("clear_for_ms"),
                format!(
                    "only applies to kind = above, below or outside (this rule is `{}`)",
                    r.kind
                ),
            );
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ConfigError, Priority, RuleKind};

    const HEAD: &str = "[gateway]\nid = \"t\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n\
        [[devices]]\nid = \"boiler\"\nbus = \"b\"\nunit = 1\n\
        points = [\n  { id = \"temp\", table = \"input\", address = 0, type = \"f32\" },\n  { id = \"mode\", table = \"holding\", address = 2, type = \"string\", length = 4 },\n]\n";

    /// Every problem of a config, as (key path, line).
    fn problems(rules: &str) -> Vec<(String, Option<usize>)> {
        match parse(&format!("{HEAD}{rules}")) {
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| (p.path, p.line)).collect(),
            Ok(_) => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_bad_rule_is_named_by_its_own_key_and_line_in_one_pass() {
        let found = problems(
            "[[rules]]\nid = \"a\"\ndevice = \"nope\"\npoint = \"temp\"\nkind = \"above\"\nthreshold = 1.0\n\
             [[rules]]\nid = \"a\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"above\"\nthreshold = 1.0\npriority = \"urgent\"\n\
             [[rules]]\nid = \"c\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"outside\"\nlow = 5.0\nhigh = 1.0\n\
             [[rules]]\nid = \"d\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"sideways\"\n",
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "rules[0].device",
            "rules[1].id",
            "rules[1].priority",
            "rules[2].low",
            "rules[3].kind",
        ] {
            assert!(paths.contains(&want), "{want} not in {found:?}");
        }
        assert!(found.iter().all(|(_, line)| line.is_some()), "{found:?}");
    }

    #[test]
    fn a_number_rule_needs_its_number_and_a_number_point() {
        let found = problems(
            "[[rules]]\nid = \"a\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"above\"\n\
             [[rules]]\nid = \"b\"\ndevice = \"boiler\"\npoint = \"mode\"\nkind = \"above\"\nthreshold = 1.0\n\
             [[rules]]\nid = \"c\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"rate\"\nper_s = 0.0\n",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found.iter().any(|(p, _)| p == "rules[2].per_s"),
            "{found:?}"
        );
    }

    #[test]
    fn clear_for_ms_applies_to_threshold_rules_only() {
        let found = problems(
            "[[rules]]\nid = \"a\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"above\"\nthreshold = 90.0\nclear_for_ms = 5000\n\
             [[rules]]\nid = \"b\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"rate\"\nper_s = 1.0\nclear_for_ms = 5000\n\
             [[rules]]\nid = \"c\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"above\"\nthreshold = 90.0\nclear_for_ms = -1\n",
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["rules[1].clear_for_ms", "rules[2].clear_for_ms"],
            "{found:?}"
        );
    }

    #[test]
    fn a_good_rule_keeps_its_settings_and_defaults_to_normal_priority() {
        let c = parse(&format!(
            "{HEAD}[[rules]]\nid = \"hot\"\ndevice = \"boiler\"\npoint = \"temp\"\nkind = \"above\"\nthreshold = 90.0\nfor_ms = 2000\n"
        ))
        .unwrap()
        .config;
        let r = &c.rules[0];
        assert_eq!((r.device, r.point, r.for_ms), (0, Some(0), 2000));
        assert_eq!(r.priority, Priority::Normal);
        assert!(matches!(r.kind, RuleKind::Above { .. }), "{:?}", r.kind);
    }
}
