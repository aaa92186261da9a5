//! The telemetry the writer has just committed, kept in memory for the sinks: a sink that keeps
//! up takes its next rows from here and reads nothing back from SQLite (decoding the outbox
//! again was the largest piece of the gateway's CPU with both sinks on: BENCHMARKS.md, cost per
//! point sample). Only committed rows are put here, in commit order, so what a sink sends and
//! the cursor it persists mean what they meant; a sink further behind than the tail reaches, or
//! one starting again, reads SQLite as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::outbox::{DeviceNames, OutboxRow, SampleRow};
use crate::config::Config;
use crate::model::Report;
use crate::sync::Locked;

/// Points the tail holds at most (about two seconds of 15,000 values a second, ~2 MB): a sink
/// reads each round well within that, and the rows it holds unconfirmed are these same ones,
/// shared, instead of copies of its own.
const MAX_POINTS: usize = 32_768;

pub struct Tail {
    inner: Mutex<Inner>,
    /// Bumped after each commit that wrote events or status changes: a sink reads those
    /// streams from SQLite only when this moved since its last look.
    others: AtomicU64,
    /// Each device's id and its points' ids, shared by every row.
    names: Vec<Arc<DeviceNames>>,
}

struct Inner {
    /// Committed samples, oldest first.
    rows: VecDeque<Arc<SampleRow>>,
    points: usize,
    /// Every committed sample with a higher id is in `rows`: the id of the newest sample that
    /// was committed before the first one held (at open, the newest in the file).
    covered_from: i64,
}

impl Tail {
    /// An empty tail over a store whose newest telemetry id is `newest`.
    pub fn new(config: &Config, newest: i64) -> Tail {
        Tail {
            inner: Mutex::new(Inner {
                rows: VecDeque::new(),
                points: 0,
                covered_from: newest,
            }),
            others: AtomicU64::new(0),
            names: config
                .devices
                .iter()
                .map(|d| {
                    Arc::new(DeviceNames {
                        device: d.id.clone(),
                        points: d.points.iter().map(|p| p.id.clone()).collect(),
                    })
                })
                .collect(),
        }
    }

    /// Reports just committed as samples `ids` (the same order): held for the sinks.
    pub(super) fn committed(&self, reports: &[(i64, &Report)]) {
        if reports.is_empty() {
            return;
        }
        let rows: Vec<Arc<SampleRow>> = reports
            .iter()
            .map(|&(id, r)| Arc::new(self.sample(id, r)))
            .collect();
        let mut t = self.inner.locked();
        for row in rows {
            // Ids are handed out one after another; a jump means samples written by someone
            // else (a tool on the file): what came before this one is SQLite's to give.
            if row.id != t.rows.back().map_or(t.covered_from, |r| r.id) + 1 {
                t.rows.clear();
                t.points = 0;
                t.covered_from = row.id - 1;
            }
            t.points += row.points.len().max(1);
            t.rows.push_back(row);
        }
        while t.points > MAX_POINTS {
            let Some(old) = t.rows.pop_front() else { break };
            t.points -= old.points.len().max(1);
            t.covered_from = old.id;
        }
    }

    fn sample(&self, id: i64, r: &Report) -> SampleRow {
        SampleRow {
            id,
            names: self.names[r.device].clone(),
            ts: r.ts,
            points: r
                .rows
                .iter()
                .map(|row| {
                    let p = u32::try_from(row.point).unwrap_or(u32::MAX);
                    (p, row.value.clone(), row.quality)
                })
                .collect(),
        }
    }

    /// A commit wrote events or status changes.
    pub(super) fn others_committed(&self) {
        self.others.fetch_add(1, Relaxed);
    }

    /// How many commits wrote events or status changes so far.
    pub fn others(&self) -> u64 {
        self.others.load(Relaxed)
    }

    /// Up to `limit` samples after `after`, up to and including `upto`, oldest first; `None`
    /// when the tail does not hold every committed sample after `after` (read SQLite then).
    pub fn read(&self, after: i64, upto: i64, limit: usize) -> Option<Vec<OutboxRow>> {
        let t = self.inner.locked();
        if after < t.covered_from {
            return None;
        }
        let start = t.rows.partition_point(|r| r.id <= after);
        Some(
            t.rows
                .range(start..)
                .take_while(|r| r.id <= upto)
                .take(limit)
                .map(|r| OutboxRow::Sample(r.clone()))
                .collect(),
        )
    }

    /// The newest committed telemetry id.
    pub fn newest(&self) -> i64 {
        let t = self.inner.locked();
        t.rows.back().map_or(t.covered_from, |r| r.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quality, Row, Value};

    fn report(device: usize, ts: i64, n: usize) -> Report {
        Report {
            device,
            ts,
            rows: (0..n)
                .map(|point| Row {
                    device,
                    point,
                    ts,
                    value: Some(Value::Int(ts)),
                    quality: Quality::Good,
                })
                .collect(),
        }
    }

    fn ids(rows: &[OutboxRow]) -> Vec<i64> {
        rows.iter().map(OutboxRow::id).collect()
    }

    #[test]
    fn the_tail_serves_only_what_it_holds_all_of() {
        let config = crate::config::parse(
            "[gateway]\nid = \"gw\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n\
             [[devices]]\nid = \"d\"\nbus = \"b\"\nunit = 1\npoints = [\n\
             { id = \"a\", table = \"holding\", address = 0, type = \"u16\" },\n\
             { id = \"b\", table = \"holding\", address = 1, type = \"u16\" },\n]\n",
        )
        .unwrap()
        .config;
        let tail = Tail::new(&config, 10);
        // Nothing after 10 committed yet: an empty answer, not "read SQLite".
        assert_eq!(tail.read(10, i64::MAX, 100).map(|r| ids(&r)), Some(vec![]));
        // Rows before what the tail covers are SQLite's.
        assert!(tail.read(9, i64::MAX, 100).is_none());
        let (r11, r12, r13) = (report(0, 1, 2), report(0, 2, 2), report(0, 3, 1));
        tail.committed(&[(11, &r11), (12, &r12)]);
        tail.committed(&[(13, &r13)]);
        assert_eq!(tail.newest(), 13);
        assert_eq!(
            tail.read(10, i64::MAX, 2).map(|r| ids(&r)),
            Some(vec![11, 12])
        );
        assert_eq!(tail.read(11, 12, 100).map(|r| ids(&r)), Some(vec![12]));
        let rows = tail.read(12, i64::MAX, 100).unwrap();
        let OutboxRow::Sample(s) = &rows[0] else {
            panic!("{rows:?}")
        };
        assert_eq!((s.device_id(), s.ts, s.points.len()), ("d", 3, 1));
        assert_eq!(s.point(0).map(|p| p.0), Some("a"));
        // A sample written by someone else (id 14) is not here: the tail answers only after it.
        let r15 = report(0, 4, 1);
        tail.committed(&[(15, &r15)]);
        assert!(tail.read(13, i64::MAX, 10).is_none());
        assert_eq!(tail.read(14, i64::MAX, 10).map(|r| ids(&r)), Some(vec![15]));
        // Past its size the oldest go, and with them what the tail can answer for.
        let big = report(0, 4, 2);
        let many: Vec<(i64, &Report)> = (16..16 + MAX_POINTS as i64).map(|id| (id, &big)).collect();
        tail.committed(&many);
        assert!(tail.read(15, i64::MAX, 10).is_none());
        let newest = tail.newest();
        assert_eq!(newest, 15 + MAX_POINTS as i64);
        assert_eq!(
            tail.read(newest - 2, i64::MAX, 10).map(|r| ids(&r)),
            Some(vec![newest - 1, newest])
        );
    }
}
