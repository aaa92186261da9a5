//! One poll of one device: the offline probe, its planned reads (a refused merged read is
//! bisected and the plan kept), the episode's log line, and online/offline by failures in a row.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::Instant;

use super::{decode_point, BusEvent, BusTask, PointError};
use crate::config::Device;
use crate::modbus::plan::{self, Block};
use crate::modbus::reply::{Exception, LinkError};
use crate::model::{now_ms, Value};
use crate::sync::Locked;

/// What one pass over a device's reads found.
struct Pass {
    /// The groups (rates) read in this pass.
    groups: Vec<usize>,
    results: Vec<(usize, Result<Value, PointError>)>,
    /// Whether the device answered anything at all (an exception from the device counts).
    answered: bool,
    /// (kind, text): the kind decides whether this is a new episode, the text is logged.
    problem: Option<(String, String)>,
    /// The device's raw words for a Modbus server mirror, if one mirrors it.
    image: Option<std::sync::Arc<crate::modbus::image::Image>>,
}

impl Pass {
    /// Every point of `block` failed with `e` (and is not mirrored until read again).
    fn fail_all(&mut self, block: &Block, e: &PointError) {
        if let Some(image) = &self.image {
            image.fail(&block.points);
        }
        self.results
            .extend(block.points.iter().map(|&p| (p, Err(e.clone()))));
    }
}

impl BusTask {
    /// Polls one device. Returns false when the pipeline is gone and the bus should stop.
    pub(super) async fn poll(&mut self, k: usize) -> bool {
        let device = self.slots[k].index;
        // The config shared, not the device copied: a copy of its points (their ids and units)
        // at every poll was 9 % of the gateway's CPU on the 10 × 50 × 30 load.
        let config = self.config.clone();
        let dev = &config.devices[device];
        if self.slots[k].online == Some(false) && !self.probe(k, dev).await {
            // Silent through the bus's outage, and still now that the bus is back: its own
            // alarm at last.
            if self.slots[k].silenced && self.bus_down.is_none() {
                self.slots[k].silenced = false;
                let status = BusEvent::Status {
                    device,
                    ts: now_ms(),
                    online: false,
                    reason: "no answer now that the bus is back".into(),
                    bus_down: false,
                };
                return self.events.send(status).await.is_ok();
            }
            return true;
        }
        let pass = self.read_device(k, dev).await;
        let ts = now_ms();
        let change = self.settle(k, dev, &pass.groups, pass.answered, pass.problem);
        // The bus first: a device's offline under a dead bus is part of the bus's alarm.
        let Some(bus_down) = self.announce_bus(ts).await else {
            return false;
        };
        if let Some((online, _)) = &change {
            self.slots[k].silenced = !online && bus_down.is_some();
        }
        if let Some((online, reason)) = change {
            self.metrics.devices[device]
                .online
                .store(i64::from(online), Relaxed);
            if online {
                tracing::info!(device = %dev.id, "online");
            } else {
                tracing::warn!(device = %dev.id, "offline after {} failed polls: {reason}", dev.offline_after);
            }
            let status = BusEvent::Status {
                device,
                ts,
                online,
                reason,
                bus_down: bus_down.is_some(),
            };
            if self.events.send(status).await.is_err() {
                return false;
            }
        }
        self.events
            .send(BusEvent::Polled {
                device,
                ts,
                at: tokio::time::Instant::now(),
                results: pass.results,
            })
            .await
            .is_ok()
    }

    /// Sends the bus's change of state, if any; returns the state (`None` when the pipeline
    /// is gone).
    async fn announce_bus(&mut self, ts: crate::model::Millis) -> Option<Option<String>> {
        let bus_down = self.bus_down_now();
        if bus_down == self.bus_down {
            return Some(bus_down);
        }
        let name = &self.config.buses[self.bus].name;
        if let Some(cause) = &bus_down {
            tracing::warn!(bus = %name, "bus down: {cause}");
        } else {
            tracing::info!(bus = %name, "bus answering again");
            // Back: its offline devices are probed now, not at their backoff.
            let now = Instant::now();
            for s in self.slots.iter_mut().filter(|s| s.online == Some(false)) {
                s.due_all(now);
            }
        }
        self.bus_down.clone_from(&bus_down);
        let ev = BusEvent::Bus {
            bus: self.bus,
            ts,
            online: bus_down.is_none(),
            cause: bus_down.clone().unwrap_or_default(),
        };
        self.events.send(ev).await.ok()?;
        Some(bus_down)
    }

    /// Why the whole bus is down, if it is: its link cannot connect, or no device on it
    /// answers (every one failing, at least one past its offline threshold). The first answer
    /// brings it back.
    fn bus_down_now(&self) -> Option<String> {
        if let Some(cause) = self.metrics.buses[self.bus].down.locked().clone() {
            return Some(cause);
        }
        // Asked after every poll: the walk for an offline device only when none answers.
        let failing = || {
            self.slots
                .iter()
                .all(|s| s.failures > 0 || s.online == Some(false))
        };
        let offline = || self.slots.iter().any(|s| s.online == Some(false));
        (failing() && offline()).then(|| "no answer from any device".to_string())
    }

    /// An offline device gets one probe, no retries, so a dead slave costs at most one timeout
    /// per backoff period. Returns whether it answered (then it is polled in full).
    async fn probe(&mut self, k: usize, dev: &Device) -> bool {
        let Some(first) = self.slots[k]
            .groups
            .iter()
            .find_map(|g| g.blocks.first())
            .cloned()
        else {
            return false;
        };
        match self.read(k, &first, 0).await {
            Ok(Ok(_) | Err(_)) => true,
            Err(e) => {
                let s = &mut self.slots[k];
                let pause = s.probe_backoff.fail();
                s.due_all(Instant::now() + pause);
                tracing::debug!(device = %dev.id, "probe failed: {e}; next in {pause:?}");
                false
            }
        }
    }

    /// The groups due now, and those due within half the soonest one's interval: read in the
    /// same turn rather than a turn of their own moments later.
    fn due_groups(&self, k: usize) -> Vec<usize> {
        let now = Instant::now();
        let groups = &self.slots[k].groups;
        let soonest = groups
            .iter()
            .filter(|g| g.next_due <= now)
            .map(|g| g.interval)
            .min()
            .unwrap_or_default();
        let horizon = now + soonest / 2;
        (0..groups.len())
            .filter(|&g| groups[g].next_due <= horizon)
            .collect()
    }

    /// Reads every block of the due groups' plans. Exception 02 on a merged read bisects it,
    /// so one bad address costs one point, and the split plan is kept; after a link failure
    /// the device's other blocks are not tried now (no second timeout).
    async fn read_device(&mut self, k: usize, dev: &Device) -> Pass {
        let device = self.slots[k].index;
        let retries = self.config.buses[self.bus].retries;
        let mut pass = Pass {
            groups: self.due_groups(k),
            results: Vec::with_capacity(dev.points.len()),
            answered: false,
            problem: None,
            image: self.images.device(device).cloned(),
        };
        let mut link_failure: Option<LinkError> = None;
        for i in 0..pass.groups.len() {
            let g = pass.groups[i];
            // The plan shared, its blocks read in place: copying each block (its points) and
            // the plan after every poll was an allocation a block, to keep a plan that
            // changes only when a refused read is split.
            let planned = self.slots[k].groups[g].blocks.clone();
            let mut next = 0;
            // The halves of a refused block, read before the plan's next.
            let mut halves: Vec<Block> = Vec::new();
            // The group's new plan, once one of its blocks was split.
            let mut replan: Option<Vec<Block>> = None;
            loop {
                let block = if let Some(b) = halves.pop() {
                    Cow::Owned(b)
                } else if let Some(b) = planned.get(next) {
                    next += 1;
                    Cow::Borrowed(b)
                } else {
                    break;
                };
                if let Some(e) = &link_failure {
                    pass.fail_all(&block, &PointError::Link(e.clone()));
                } else {
                    match self.read(k, &block, retries).await {
                        Ok(Ok(data)) => self.decode_block(&mut pass, dev, device, &block, &data),
                        Ok(Err(Exception::ILLEGAL_ADDRESS)) if block.points.len() > 1 => {
                            pass.answered = true;
                            let (a, b) = plan::split(&block, &self.slots[k].spans)
                                .expect("two or more points");
                            halves.push(b);
                            halves.push(a);
                            // The blocks before it were kept as planned.
                            replan.get_or_insert_with(|| planned[..next - 1].to_vec());
                            continue;
                        }
                        Ok(Err(code)) => {
                            // 0A/0B come from a gateway in front of the device: the device
                            // itself is absent.
                            pass.answered |= !code.from_gateway();
                            pass.problem.get_or_insert_with(|| {
                                let text = format!(
                                    "{} at {} {}+{}",
                                    code, block.table, block.start, block.count
                                );
                                (text.clone(), text)
                            });
                            pass.fail_all(&block, &PointError::Exception(code));
                        }
                        Err(e) => {
                            pass.problem.get_or_insert_with(|| {
                                (format!("link {}", e.kind()), e.to_string())
                            });
                            pass.fail_all(&block, &PointError::Link(e.clone()));
                            link_failure = Some(e);
                        }
                    }
                }
                if let Some(blocks) = &mut replan {
                    blocks.push(block.into_owned());
                }
            }
            if let Some(mut blocks) = replan {
                blocks.sort_by_key(|b| (b.table, b.start));
                tracing::info!(device = %dev.id, requests = blocks.len(), "read plan split around a refused address");
                self.slots[k].groups[g].blocks = Arc::new(blocks);
            }
        }
        // Each point once: an unstable sort is the same order, without the stable sort's
        // scratch buffer (an allocation a poll, ~1 % of the gateway's instructions).
        pass.results.sort_unstable_by_key(|(p, _)| *p);
        pass
    }

    /// An answered block's points, decoded; a decode error is counted and named.
    fn decode_block(
        &self,
        pass: &mut Pass,
        dev: &Device,
        device: usize,
        block: &Block,
        data: &crate::modbus::reply::Data,
    ) {
        pass.answered = true;
        if let Some(image) = self.images.device(device) {
            image.fill(dev, block, data);
        }
        for &p in &block.points {
            let point = &dev.points[p];
            let r = decode_point(point, block, data).map_err(PointError::Decode);
            if let Err(e) = &r {
                self.metrics.devices[device]
                    .decode_errors
                    .fetch_add(1, Relaxed);
                pass.problem.get_or_insert_with(|| {
                    (
                        format!("decode {}", point.id),
                        format!("point {}: {e}", point.id),
                    )
                });
            }
            pass.results.push((p, r));
        }
    }

    /// Logs a new episode once (a different problem, or good again), counts failures in a row,
    /// schedules the next poll or probe, and returns a change of online state with its reason.
    fn settle(
        &mut self,
        k: usize,
        dev: &Device,
        read: &[usize],
        answered: bool,
        problem: Option<(String, String)>,
    ) -> Option<(bool, String)> {
        if let Some((_, text)) = &problem {
            *self.metrics.devices[self.slots[k].index]
                .last_error
                .locked() = Some((now_ms(), text.clone()));
        }
        let s = &mut self.slots[k];
        let kind = problem.as_ref().map(|(k, _)| k);
        if s.last_problem.as_ref() != kind {
            match &problem {
                Some((_, p)) => tracing::warn!(device = %dev.id, unit = dev.unit, "{p}"),
                None if s.last_problem.is_some() => {
                    tracing::info!(device = %dev.id, "reads good again");
                }
                None => {}
            }
            s.last_problem = kind.cloned();
        }
        let mut status = None;
        if answered {
            s.failures = 0;
            s.probe_backoff.reset();
            if s.online != Some(true) {
                s.online = Some(true);
                status = Some((true, "answering".to_string()));
            }
            s.schedule(read);
        } else {
            s.failures += 1;
            if s.failures >= dev.offline_after && s.online != Some(false) {
                s.online = Some(false);
                s.probe_backoff.reset();
                status = Some((false, problem.map(|(_, text)| text).unwrap_or_default()));
            }
            if s.online == Some(false) {
                let pause = s.probe_backoff.fail();
                s.due_all(Instant::now() + pause);
            } else {
                s.schedule(read);
            }
        }
        status
    }
}
