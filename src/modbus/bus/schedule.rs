//! A device's poll schedule: its points grouped by read rate (the device's, or a point's own
//! `poll_interval_ms`), a read plan and a due time per group.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::DeviceSlot;
use crate::modbus::plan::{self, Block, Span};

/// The points of a device read at one rate, and their read plan.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) interval: Duration,
    /// The current read plan; blocks refused with exception 02 are replaced by their halves.
    pub(super) blocks: Arc<Vec<Block>>,
    pub(super) next_due: Instant,
}

/// A device's points grouped by how often they are read, the device's own rate first.
pub(super) fn groups(d: &crate::config::Device, spans: &[Span], first: Instant) -> Vec<Group> {
    // Calculated points are never read from the device.
    let read = |p: &usize| !d.points[*p].calculated;
    let mut rates: Vec<Duration> = (0..d.points.len())
        .filter(read)
        .map(|p| d.point_interval(p))
        .collect();
    rates.sort_by_key(|&r| (r != d.poll_interval, r));
    rates.dedup();
    rates
        .into_iter()
        .map(|interval| {
            let points = (0..d.points.len())
                .filter(|&p| read(&p) && d.point_interval(p) == interval)
                .collect();
            Group {
                interval,
                blocks: Arc::new(plan::plan_some(
                    spans,
                    points,
                    d.max_registers_per_read,
                    d.max_gap,
                )),
                next_due: first,
            }
        })
        .collect()
}

impl DeviceSlot {
    /// When its next read is due: its soonest group's.
    pub(super) fn next_due(&self) -> Instant {
        self.groups
            .iter()
            .map(|g| g.next_due)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Every group due at `at`: a probe's backoff, a repoll after a write or a bus back.
    pub(super) fn due_all(&mut self, at: Instant) {
        for g in &mut self.groups {
            g.next_due = at;
        }
    }

    /// The groups just read are next due one interval on (not later than now: a late turn is
    /// not made up with a burst).
    pub(super) fn schedule(&mut self, read: &[usize]) {
        let now = Instant::now();
        for &g in read {
            let g = &mut self.groups[g];
            g.next_due = (g.next_due + g.interval).max(now);
        }
    }
}
