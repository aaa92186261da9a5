//! The live state of every device and point, and the report-on-change decision (deadband and
//! `report_every_s`) that turns polls into reports: what changed, for the stages after it.

use std::sync::{Arc, RwLock};

use crate::config::{Config, Point};
use crate::modbus::bus::BusEvent;
use crate::model::{Millis, Quality, Report, Row, Value};
use crate::store::Restored;
use crate::sync::RwLocked;

/// What a bus event changed in the live state, for the stages after it: the pipeline hands a
/// report to its [`Telemetry`] port and the store, a status to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Points whose new reading must be reported (history, pushes, upstreams).
    Report(Report),
    /// A device went online or offline.
    Status {
        device: usize,
        online: bool,
        last_seen: Option<Millis>,
        ts: Millis,
    },
}

/// Who is told of each report as it happens, besides the store: the dashboard's pushes and the
/// OPC UA server's variables. The pipeline's port, so that it names neither.
pub trait Telemetry: Send + Sync {
    /// `read_at`: when the poll's answer arrived (the push's latency is counted from it).
    fn report(&self, report: &Report, read_at: std::time::Instant);
}

#[derive(Debug, Clone, PartialEq)]
pub struct PointLive {
    /// The last value read; kept (with quality `bad`) when a later read fails, so a technician
    /// still sees what the device last said.
    pub value: Option<Value>,
    pub quality: Quality,
    pub ts: Millis,
    /// Why the last read gave no value.
    pub error: Option<String>,
    /// What was last written to history, and when.
    reported: Option<(Option<Value>, Quality, Millis)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceLive {
    pub online: bool,
    pub last_seen: Option<Millis>,
    pub points: Vec<PointLive>,
    /// No point of the device can turn stale by time before `.0` (see [`mark_stale`]), as
    /// worked out at `.1`; the default makes the next check look.
    stale_check: (Millis, Millis),
}

impl DeviceLive {
    /// A device's state carried over a reload: its read points as they were (the bus reads
    /// them unchanged), its calculated points, which come after them and may have been added,
    /// changed or removed, as `fresh` (restored from the store) has them.
    pub fn carried(mut self, fresh: DeviceLive, device: &crate::config::Device) -> DeviceLive {
        let read = device.points.iter().filter(|p| !p.calculated).count();
        self.points.truncate(read);
        self.points.extend(fresh.points.into_iter().skip(read));
        // The new config may poll faster: looked at again whole.
        self.stale_check = (Millis::MIN, Millis::MIN);
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct Live {
    pub devices: Vec<DeviceLive>,
}

pub type SharedLive = Arc<RwLock<Live>>;

impl Live {
    /// The state a (re)start begins with: what the store remembers, every value `stale` until
    /// it is polled again.
    pub fn restored(config: &Config, restored: &Restored) -> Live {
        let devices = config
            .devices
            .iter()
            .enumerate()
            .map(|(d, dev)| DeviceLive {
                online: false,
                last_seen: restored.devices.get(d).and_then(|x| x.1),
                stale_check: (Millis::MIN, Millis::MIN),
                points: dev
                    .points
                    .iter()
                    .enumerate()
                    .map(|(p, _)| {
                        let old = restored
                            .points
                            .get(d)
                            .and_then(|v| v.get(p))
                            .cloned()
                            .flatten();
                        PointLive {
                            value: old.as_ref().and_then(|(v, _)| v.clone()),
                            quality: Quality::Stale,
                            ts: old.as_ref().map_or(0, |(_, ts)| *ts),
                            error: None,
                            reported: None,
                        }
                    })
                    .collect(),
            })
            .collect();
        Live { devices }
    }

    pub fn online_count(&self) -> usize {
        self.devices.iter().filter(|d| d.online).count()
    }
}

/// Reads the lock even if a panicking thread poisoned it: the data is plain values.
pub fn read(live: &SharedLive) -> std::sync::RwLockReadGuard<'_, Live> {
    live.read_locked()
}

pub fn write(live: &SharedLive) -> std::sync::RwLockWriteGuard<'_, Live> {
    live.write_locked()
}

/// Whether a new reading must go to history: a change of quality, a move past the deadband,
/// or `report_every` elapsed since the last report.
fn must_report(point: &Point, p: &PointLive, ts: Millis) -> bool {
    let Some((old_value, old_quality, old_ts)) = &p.reported else {
        return true;
    };
    if *old_quality != p.quality || ts - old_ts >= point.report_every.as_millis() as i64 {
        return true;
    }
    match (old_value, &p.value) {
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if point.deadband > 0.0 => (x - y).abs() > point.deadband,
            _ => a != b,
        },
        (None, None) => false,
        _ => true,
    }
}

/// SPEC: a point not refreshed within 3 × its poll interval (at least 3 s) is
/// `stale` by itself, with no rule: its polls stopped arriving (a stalled bus, a slave that
/// answers too slowly). Only `good` values turn stale (a failed read is `bad` already), and
/// the next good read makes them good again. Checked once a second. Returns the reports the
/// change calls for (see [`turn_stale`]).
///
/// A device is looked at only once the earliest time one of its points could go stale has
/// passed (`DeviceLive::stale_check`, lowered by [`apply`] when a point turns good): walking
/// all 15,000 points of the store bench every second, a few MB of memory, was 7 % of the
/// gateway's time in session 28's profile.
pub fn mark_stale(config: &Config, live: &SharedLive, now: Millis) -> Vec<Report> {
    let limit = |d: usize, p: usize| stale_after(config.devices[d].point_interval(p));
    let mut due: Vec<(usize, usize)> = Vec::new();
    {
        let mut l = write(live);
        for (d, dev) in l.devices.iter_mut().enumerate() {
            let (until, at) = dev.stale_check;
            // A clock set back makes the bound meaningless: looked at whole.
            if now <= until && now >= at {
                continue;
            }
            let mut next = Millis::MAX;
            for (k, p) in dev.points.iter().enumerate() {
                // A calculated point's quality follows its inputs', never its own clock.
                if p.quality != Quality::Good || config.devices[d].points[k].calculated {
                    continue;
                }
                let by = p.ts.saturating_add(limit(d, k));
                if now > by {
                    due.push((d, k));
                } else {
                    next = next.min(by);
                }
            }
            dev.stale_check = (next, now);
        }
    }
    turn_stale(live, &due, now)
}

/// How long a good value stays good without a fresh read, for a point polled this often.
fn stale_after(interval: std::time::Duration) -> Millis {
    (interval.as_millis() as Millis * 3).max(3000)
}

/// Points turned `stale` (by time, or by a `stale` rule), reported like a change of value
/// (SPEC, Quality): one report per device, its rows the points' last values marked stale, for
/// the push, the store and every upstream — a stale value was shown as good everywhere but
/// the live state.
pub fn turn_stale(live: &SharedLive, points: &[(usize, usize)], now: Millis) -> Vec<Report> {
    if points.is_empty() {
        return Vec::new();
    }
    let mut l = write(live);
    let mut reports: Vec<Report> = Vec::new();
    for &(device, point) in points {
        let pl = &mut l.devices[device].points[point];
        if pl.quality == Quality::Stale {
            continue;
        }
        pl.quality = Quality::Stale;
        pl.reported = Some((pl.value.clone(), Quality::Stale, now));
        let row = Row {
            device,
            point,
            ts: now,
            value: pl.value.clone(),
            quality: Quality::Stale,
        };
        match reports.last_mut() {
            Some(r) if r.device == device => r.rows.push(row),
            _ => reports.push(Report {
                device,
                ts: now,
                rows: vec![row],
            }),
        }
    }
    reports
}

/// A calculated point's new outcome (see `calc`), with the report decision of a read. `value`
/// `None` keeps the last one (shown with its bad quality, as a failed read keeps its value).
pub fn apply_calculated(
    config: &Config,
    live: &mut Live,
    (device, point): (usize, usize),
    (value, quality, ts): (Option<Value>, Quality, Millis),
    error: Option<String>,
) -> Option<Row> {
    let pl = &mut live.devices[device].points[point];
    if value.is_some() {
        pl.value = value;
    }
    pl.quality = quality;
    pl.ts = ts;
    pl.error = error;
    if !must_report(&config.devices[device].points[point], pl, ts) {
        return None;
    }
    pl.reported = Some((pl.value.clone(), pl.quality, ts));
    Some(Row {
        device,
        point,
        ts,
        value: pl.value.clone(),
        quality: pl.quality,
    })
}

/// One bus event → the state changed, and what the change calls for.
pub fn apply(config: &Config, live: &SharedLive, ev: BusEvent) -> Option<Change> {
    match ev {
        BusEvent::Polled {
            device,
            ts,
            results,
            ..
        } => {
            let dev = &config.devices[device];
            // Most polls report most points: one allocation, not four growing to thirty.
            let mut rows = Vec::with_capacity(results.len());
            let mut guard = write(live);
            let d = &mut guard.devices[device];
            let mut any_good = false;
            for (p, r) in results {
                let point = &dev.points[p];
                let pl = &mut d.points[p];
                match r {
                    Ok(v) => {
                        any_good = true;
                        if pl.quality != Quality::Good {
                            // Good again from now: it may go stale before the device's bound.
                            let by = ts.saturating_add(stale_after(dev.point_interval(p)));
                            d.stale_check.0 = d.stale_check.0.min(by);
                        }
                        pl.value = Some(v);
                        pl.quality = Quality::Good;
                        pl.error = None;
                    }
                    Err(e) => {
                        pl.quality = Quality::Bad;
                        pl.error = Some(e.to_string());
                    }
                }
                pl.ts = ts;
                if must_report(point, pl, ts) {
                    pl.reported = Some((pl.value.clone(), pl.quality, ts));
                    rows.push(Row {
                        device,
                        point: p,
                        ts,
                        value: pl.value.clone(),
                        quality: pl.quality,
                    });
                }
            }
            if any_good {
                d.last_seen = Some(ts);
            }
            (!rows.is_empty()).then_some(Change::Report(Report { device, ts, rows }))
        }
        BusEvent::Status {
            device, ts, online, ..
        } => {
            let mut guard = write(live);
            let d = &mut guard.devices[device];
            d.online = online;
            if online {
                d.last_seen = Some(ts);
            }
            Some(Change::Status {
                device,
                online,
                last_seen: d.last_seen,
                ts,
            })
        }
        // The bus's alarm is an event; the state keeps devices only.
        BusEvent::Bus { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::bus::PointError;
    use crate::modbus::reply::Exception;

    /// One device: `fast` polled every second (stale after 3 s), `slow` every minute (3 min).
    fn setup() -> (Config, SharedLive) {
        let text = r#"
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
poll_interval_ms = 1000
points = [
  { id = "fast", table = "holding", address = 0, type = "u16" },
  { id = "slow", table = "holding", address = 1, type = "u16", poll_interval_ms = 60000 },
]
"#;
        let config = crate::config::parse(text).unwrap().config;
        let live = Arc::new(RwLock::new(Live::restored(&config, &Restored::default())));
        (config, live)
    }

    fn poll(config: &Config, live: &SharedLive, ts: Millis, fast: bool) {
        let fast = if fast {
            Ok(Value::UInt(1))
        } else {
            Err(PointError::Exception(Exception::ILLEGAL_ADDRESS))
        };
        let results = vec![(0, fast), (1, Ok(Value::UInt(2)))];
        let at = tokio::time::Instant::now();
        apply(
            config,
            live,
            BusEvent::Polled {
                device: 0,
                ts,
                at,
                results,
            },
        );
    }

    fn stale(config: &Config, live: &SharedLive, now: Millis) -> Vec<usize> {
        let reports = mark_stale(config, live, now);
        reports
            .iter()
            .flat_map(|r| r.rows.iter().map(|w| w.point))
            .collect()
    }

    #[test]
    fn a_point_turning_good_after_a_check_is_still_found_stale_in_time() {
        let (config, live) = setup();
        poll(&config, &live, 0, false);
        // Only `slow` is good: the device need not be looked at for three minutes...
        assert!(stale(&config, &live, 1000).is_empty());
        // ...until `fast` turns good, which brings its check forward to its own limit.
        poll(&config, &live, 1500, true);
        assert!(stale(&config, &live, 4500).is_empty());
        assert_eq!(stale(&config, &live, 4501), vec![0]);
        assert_eq!(read(&live).devices[0].points[0].quality, Quality::Stale);
        assert!(stale(&config, &live, 181_500).is_empty());
        assert_eq!(stale(&config, &live, 181_501), vec![1]);
    }

    #[test]
    fn a_clock_set_back_makes_the_check_look_at_every_point() {
        let (config, live) = setup();
        poll(&config, &live, 100_000, true);
        assert!(stale(&config, &live, 101_000).is_empty());
        // The clock goes back 50 s and the polls stop: found by the points' own times.
        poll(&config, &live, 50_000, true);
        assert_eq!(stale(&config, &live, 53_001), vec![0]);
    }
}
