//! One device's place on its bus: its read plan and schedule, its online state and probe
//! backoff; and whether a device is the same across a reload (its place then carries over).

use std::time::Duration;

use tokio::time::Instant;

use super::plan::{self, Span};
use super::schedule::{groups, Group};
use crate::backoff::Backoff;

/// Probes of a dead slave: 1 s after it went offline, doubling to at most 60 s between them.
pub(super) const PROBE_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(0.1);

pub(super) struct DeviceSlot {
    /// Index into `Config::devices`.
    pub(super) index: usize,
    pub(super) spans: Vec<Span>,
    /// The device's own rate first, then each slower or faster rate its points ask for
    /// (`poll_interval_ms` on a point): one read plan each, due on its own.
    pub(super) groups: Vec<Group>,
    pub(super) failures: u32,
    pub(super) online: Option<bool>,
    pub(super) probe_backoff: Backoff,
    /// What kind of problem was last logged, so a persisting fault is logged once per
    /// episode, not every poll (even when its text changes, as a value or a byte count may).
    pub(super) last_problem: Option<String>,
    /// Went offline while its bus was down: announced without an alarm of its own, which it
    /// gets if it still does not answer once the bus is back.
    pub(super) silenced: bool,
}

impl DeviceSlot {
    /// A device's slot before its first poll, due at `due`.
    pub(super) fn new(index: usize, d: &crate::config::Device, due: Instant) -> DeviceSlot {
        let spans = plan::spans(d);
        let groups = groups(d, &spans, due);
        DeviceSlot {
            index,
            spans,
            groups,
            failures: 0,
            online: None,
            probe_backoff: PROBE_BACKOFF,
            last_problem: None,
            silenced: false,
        }
    }
}

/// Whether a device reads the same in two configs, apart from its bus's position: the same
/// unit, points and rates (its slot, plan and state then carry over a reload).
pub fn same_device(a: &crate::config::Device, b: &crate::config::Device) -> bool {
    // What the bus reads: its calculated points are the pipeline's.
    let read = |d: &crate::config::Device| crate::config::Device {
        bus: 0,
        points: d.points.iter().filter(|p| !p.calculated).cloned().collect(),
        ..d.clone()
    };
    read(a) == read(b)
}
