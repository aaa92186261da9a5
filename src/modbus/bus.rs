//! The bus scheduler: one task per link polls its devices by deadline, one request at a time,
//! puts writes ahead of polls, and backs off from dead slaves so they never stall the rest.
//! One device's poll is `poll`'s.

mod poll;
mod scan;
mod schedule;
mod slot;

use scan::ActiveScan;
pub use scan::{ScanDone, ScanRequest, ScanStep};
pub use slot::same_device;
use slot::DeviceSlot;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, CodecError, DataType, Table};
use super::image::Images;
use super::link::Link;
use super::plan::{self, Block};
use super::reply::{Data, Exception, Fault, LinkError, Reply, WriteOp};
use crate::config::Config;
use crate::metrics::{Metrics, RequestResult};
use crate::model::{Millis, Value};
use crate::sync::Locked;

/// Why one point has no fresh value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PointError {
    #[error("device answered {0}")]
    Exception(Exception),
    #[error("{0}")]
    Link(LinkError),
    #[error("decode: {0}")]
    Decode(CodecError),
}

/// What a bus tells the rest of the pipeline.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// One poll of one device: every point's new value or why it has none.
    Polled {
        device: usize,
        ts: Millis,
        /// When the read completed, for the push latency histogram.
        at: tokio::time::Instant,
        results: Vec<(usize, Result<Value, PointError>)>,
    },
    /// The device came online or went offline.
    Status {
        device: usize,
        ts: Millis,
        online: bool,
        reason: String,
        /// Its bus is down: the device's offline is part of the bus's alarm, not one of its own.
        bus_down: bool,
    },
    /// The bus went down (its link cannot connect, or no device on it answers) or came back.
    Bus {
        bus: usize,
        ts: Millis,
        online: bool,
        cause: String,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("point is not writable")]
    NotWritable,
    #[error("cannot encode value: {0}")]
    Encode(CodecError),
    #[error("device answered {0}")]
    Exception(Exception),
    #[error("device unreachable: {0}")]
    Link(LinkError),
    #[error("the bus is not running")]
    BusGone,
    /// A command older than `[mqtt] command_max_age_s` (by its own timestamp, else since it
    /// was received): refused rather than run late.
    #[error("command is {age_s:.1} s old, past command_max_age_s = {max_s}: not carried out")]
    TooOld { age_s: f64, max_s: u64 },
    /// The commands waiting for their turn are at their bound.
    #[error("too many commands waiting: not carried out")]
    Busy,
}

impl WriteError {
    /// The SPEC reply code of a failed write (WebSocket `device.write`, MQTT `write/result`).
    pub fn code(&self) -> u16 {
        match self {
            WriteError::NotWritable => 405,
            WriteError::Encode(_) => 400,
            WriteError::Exception(_) | WriteError::Link(_) | WriteError::BusGone => 503,
            WriteError::TooOld { .. } => 408,
            WriteError::Busy => 429,
        }
    }
}

/// Polls and status changes a bus task may have waiting for the pipeline; past it the bus
/// waits: a slow store slows the buses down instead of growing memory (nothing is dropped).
pub const EVENTS_CAPACITY: usize = 256;

/// An idle bus stamps its progress this often; a bus is stalled when its last stamp is older
/// than [`stall_limit`].
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a healthy bus can go without a progress stamp: one request at its deadline, the
/// silence after it, an idle wake-up, and slack for a loaded board.
pub fn stall_limit(bus: &crate::config::Bus) -> Duration {
    bus.timeout + bus.inter_request_delay + BEAT_EVERY + Duration::from_secs(10)
}

/// A write for the bus to put ahead of its polls.
#[derive(Debug)]
pub struct WriteCommand {
    pub device: usize,
    pub point: usize,
    pub value: Value,
    /// What the device holds after the write, read back (`None` when that read failed).
    pub reply: oneshot::Sender<Result<Option<Value>, WriteError>>,
}

/// A raw read for commissioning (the register inspector), in the bus's turn like a write.
#[derive(Debug)]
pub struct RawRead {
    /// Any unit id on the bus, configured or not (the inspector probes new ones).
    pub unit: u8,
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub reply: oneshot::Sender<Reply<Data>>,
}

/// What an operator asks of a bus, ahead of its polls.
#[derive(Debug)]
pub enum BusRequest {
    Write(WriteCommand),
    Read(RawRead),
    /// `bus.scan`: probe unit ids between polls.
    Scan(ScanRequest),
    /// `bus.scanCancel`: end the running scan after the probe in progress.
    ScanCancel,
    /// Live reload: stop between requests and hand the task over whole (its open link, its
    /// schedule and backoffs), to be re-targeted at the new config and run again.
    Handover(oneshot::Sender<BusTask>),
}

pub struct BusTask {
    bus: usize,
    config: Arc<Config>,
    link: Link,
    slots: Vec<DeviceSlot>,
    events: mpsc::Sender<BusEvent>,
    writes: mpsc::Receiver<BusRequest>,
    metrics: Arc<Metrics>,
    /// Raw words of the devices a Modbus server unit mirrors.
    images: Arc<Images>,
    scan: Option<ActiveScan>,
    /// A running scan probes next (after a poll); else a due poll goes first.
    scan_turn: bool,
    /// Why the bus is down, as last announced (`BusEvent::Bus`); `None` while it is up. It
    /// starts unknown (`Some("")`), so the first poll announces the bus either way: a
    /// `bus_offline` alarm from before a restart clears once the bus answers again.
    bus_down: Option<String>,
}

impl std::fmt::Debug for BusTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusTask")
            .field("bus", &self.config.buses[self.bus].name)
            .field("devices", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl BusTask {
    pub fn new(
        bus: usize,
        config: Arc<Config>,
        events: mpsc::Sender<BusEvent>,
        writes: mpsc::Receiver<BusRequest>,
        metrics: Arc<Metrics>,
        images: Arc<Images>,
    ) -> BusTask {
        let b = &config.buses[bus];
        let link = Link::new(b.link.clone(), b.timeout, b.inter_request_delay);
        let _ = metrics.buses[bus].wire.set(link.wire());
        let now = Instant::now();
        let slots = config
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.bus == bus)
            .enumerate()
            // Stagger the first polls a little so many devices do not all start at once.
            .map(|(k, (index, d))| {
                DeviceSlot::new(index, d, now + Duration::from_millis(k as u64 % 50))
            })
            .collect();
        BusTask {
            bus,
            config,
            link,
            slots,
            scan: None,
            scan_turn: false,
            bus_down: Some(String::new()),
            events,
            writes,
            metrics,
            images,
        }
    }

    /// Points a handed-over task at a new config (live reload) whose bus has the same link.
    /// A device unchanged keeps its slot (schedule, plan, online state and backoff), wherever
    /// it now sits; a device added or changed gets a fresh one, polled at once; a device
    /// removed is dropped. The link carries on as it was: adding a device to a bus restarted
    /// the whole bus, its link and every other device's polling.
    pub fn retarget(
        &mut self,
        bus: usize,
        config: Arc<Config>,
        events: mpsc::Sender<BusEvent>,
        writes: mpsc::Receiver<BusRequest>,
        metrics: Arc<Metrics>,
        images: Arc<Images>,
    ) {
        let mut old: std::collections::HashMap<String, DeviceSlot> = self
            .slots
            .drain(..)
            .map(|s| (self.config.devices[s.index].id.clone(), s))
            .collect();
        let now = Instant::now();
        for (index, d) in config
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.bus == bus)
        {
            let kept = old
                .remove(&d.id)
                .filter(|s| same_device(&self.config.devices[s.index], d));
            self.slots.push(match kept {
                Some(mut s) => {
                    s.index = index;
                    s
                }
                None => DeviceSlot::new(index, d, now),
            });
        }
        self.bus = bus;
        self.config = config;
        self.events = events;
        self.writes = writes;
        // The link's wire figures carry on into the new gateway's metrics.
        let _ = metrics.buses[bus].wire.set(self.link.wire());
        self.metrics = metrics;
        self.images = images;
    }

    /// Cuts a handed-over task from the old pipeline (which ends only when every sender into it
    /// is gone) until [`BusTask::retarget`] connects it to the new one.
    pub fn detach(&mut self) {
        self.events = mpsc::channel(1).0;
    }

    /// How many requests one full poll of each device takes now (for tests and logs).
    pub fn plan_sizes(&self) -> Vec<usize> {
        self.slots
            .iter()
            .map(|s| s.groups.iter().map(|g| g.blocks.len()).sum())
            .collect()
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let name = self.config.buses[self.bus].name.clone();
        tracing::info!(bus = %name, link = %self.link.describe(), devices = self.slots.len(), "bus started");
        if self.slots.is_empty() {
            return self.run_idle(cancel).await;
        }
        let (metrics, bus) = (self.metrics.clone(), self.bus);
        let mut handover = None;
        // Set after an operator request: a due poll goes next. Operator requests go ahead of
        // polls (someone is waiting on each), but only one at a time: a flood of reads aimed
        // at a silent unit stopped every poll on the bus (4/s → 0/s).
        let mut poll_turn = false;
        loop {
            metrics.beats.beat(&metrics.beats.buses[bus]);
            if cancel.is_cancelled() {
                break;
            }
            let (k, due) = self
                .slots
                .iter()
                .enumerate()
                .map(|(k, s)| (k, s.next_due()))
                .min_by_key(|&(_, due)| due)
                .expect("slots is not empty");
            // The clock read once a turn (it was read four times: clock reads were 1.8 % of the
            // gateway's CPU on the store bench, session 30); the sleep's wake reads it again.
            let now = Instant::now();
            if !(poll_turn && due <= now) {
                if let Ok(cmd) = self.writes.try_recv() {
                    poll_turn = true;
                    if let Err(tx) = self.request(cmd).await {
                        handover = Some(tx);
                        break;
                    }
                    continue;
                }
            }
            // A scan takes turns with due polls: neither waits more than one request.
            if self.scan.is_some() && (self.scan_turn || due > now) {
                if cancel.is_cancelled() {
                    break;
                }
                self.scan_turn = false;
                self.scan_step().await;
                continue;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                cmd = self.writes.recv(), if !(poll_turn && due <= now) => match cmd {
                    Some(cmd) => {
                        poll_turn = true;
                        if let Err(tx) = self.request(cmd).await {
                            handover = Some(tx);
                            break;
                        }
                    }
                    None => break,
                },
                // Wake at least every BEAT_EVERY so an idle bus still shows it is alive.
                () = super::sleep_until(due.min(now + BEAT_EVERY)) => {
                    if Instant::now() >= due {
                        self.scan_turn = true;
                        poll_turn = false;
                        if !self.poll(k).await {
                            break;
                        }
                    }
                }
            }
        }
        if let Some(tx) = handover {
            tracing::info!(bus = %name, "bus handed over for a reload");
            let _ = tx.send(self);
            return;
        }
        tracing::info!(bus = %name, "bus stopped");
    }

    /// A bus without devices (one being commissioned): serves raw reads and scans, refuses
    /// writes, until shutdown or a handover.
    async fn run_idle(mut self, cancel: CancellationToken) {
        loop {
            self.metrics.beats.beat(&self.metrics.beats.buses[self.bus]);
            while let Ok(cmd) = self.writes.try_recv() {
                if let Err(tx) = self.request(cmd).await {
                    let _ = tx.send(self);
                    return;
                }
            }
            if self.scan.is_some() {
                if cancel.is_cancelled() {
                    return;
                }
                self.scan_step().await;
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                cmd = self.writes.recv() => match cmd {
                    Some(cmd) => if let Err(tx) = self.request(cmd).await {
                        let _ = tx.send(self);
                        return;
                    },
                    None => return,
                },
                () = tokio::time::sleep(BEAT_EVERY) => {}
            }
        }
    }

    /// One request with the bus's retries on link faults (never on an exception: that is the
    /// device's considered answer).
    async fn read(&mut self, slot: usize, block: &Block, retries: u32) -> Reply<Data> {
        let device = self.slots[slot].index;
        let unit = self.config.devices[device].unit;
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            self.metrics.beats.beat(&self.metrics.beats.buses[self.bus]);
            let r = self
                .link
                .read(unit, block.table, block.start, block.count)
                .await;
            let result = match &r {
                Ok(Ok(_)) => RequestResult::Ok,
                Ok(Err(_)) => RequestResult::Exception,
                Err(LinkError::Timeout(_)) => RequestResult::Timeout,
                Err(_) => RequestResult::Error,
            };
            self.note_link(&r);
            self.metrics
                .request(device, self.bus, result, started.elapsed());
            match r {
                // The device answered, wrongly and the same way each time (another
                // function's exception, another count): a retry only triples its requests.
                Err(
                    LinkError::Down { .. }
                    | LinkError::Protocol(Fault::Function | Fault::Length, _),
                ) => return r,
                Err(_) if attempt < retries => attempt += 1,
                _ => return r,
            }
        }
    }

    /// Whether the link is down and why, for the diagnostics: an answer (data or exception)
    /// says it is up; a failed connect or a broken stream says why it is down; a silent unit
    /// says nothing about the link.
    fn note_link<T>(&self, r: &Reply<T>) {
        let down = match r {
            Ok(_) => None,
            Err(LinkError::Down { cause, .. }) => Some(cause.clone()),
            Err(e @ (LinkError::Connect { .. } | LinkError::Transport(_))) => Some(e.to_string()),
            Err(LinkError::Timeout(_) | LinkError::Protocol(..)) => return,
        };
        *self.metrics.buses[self.bus].down.locked() = down;
    }

    /// Serves an operator request; a handover comes back as `Err` for the loop to end with.
    async fn request(&mut self, req: BusRequest) -> Result<(), oneshot::Sender<BusTask>> {
        match req {
            BusRequest::Write(cmd) => self.write(cmd).await,
            BusRequest::Read(r) => {
                self.metrics.beats.beat(&self.metrics.beats.buses[self.bus]);
                let result = self.link.read(r.unit, r.table, r.address, r.count).await;
                let _ = r.reply.send(result);
            }
            BusRequest::Scan(req) => {
                if self.scan.is_some() {
                    let _ = req
                        .reply
                        .send(Err("a scan is already running on this bus".into()));
                } else {
                    self.scan = Some(ActiveScan::new(req));
                    self.scan_turn = true;
                }
            }
            BusRequest::ScanCancel => {
                if let Some(s) = self.scan.as_mut() {
                    s.cancel();
                }
            }
            BusRequest::Handover(tx) => return Err(tx),
        }
        Ok(())
    }

    async fn write(&mut self, cmd: WriteCommand) {
        let mut result = self
            .do_write(cmd.device, cmd.point, &cmd.value)
            .await
            .map(|()| None);
        if result.is_ok() {
            // What the device holds now, which a scaled or clamped value may make differ from
            // what was asked; and a poll soon so the state shows it too.
            result = Ok(self.read_back(cmd.device, cmd.point).await);
            if let Some(s) = self.slots.iter_mut().find(|s| s.index == cmd.device) {
                let point = cmd.point;
                for g in &mut s.groups {
                    if g.blocks.iter().any(|b| b.points.contains(&point)) {
                        g.next_due = Instant::now();
                    }
                }
            }
        }
        let _ = cmd.reply.send(result);
    }

    /// One point read again, decoded as its polls are.
    async fn read_back(&mut self, device: usize, point: usize) -> Option<Value> {
        let dev = &self.config.devices[device];
        let p = &dev.points[point];
        let block = Block {
            table: p.format.table,
            start: p.address,
            count: p.format.width(),
            points: vec![point],
        };
        let unit = dev.unit;
        let Ok(Ok(data)) = self
            .link
            .read(unit, block.table, block.start, block.count)
            .await
        else {
            return None;
        };
        decode_point(&self.config.devices[device].points[point], &block, &data).ok()
    }

    async fn do_write(
        &mut self,
        device: usize,
        point: usize,
        value: &Value,
    ) -> Result<(), WriteError> {
        let dev = &self.config.devices[device];
        let Some(p) = dev.points.get(point) else {
            return Err(WriteError::NotWritable);
        };
        if !p.writable || dev.bus != self.bus {
            return Err(WriteError::NotWritable);
        }
        let (unit, address, format) = (dev.unit, p.address, p.format.clone());
        let op = match (format.table, format.data_type, format.bit) {
            (Table::Coil, _, _) => {
                WriteOp::Coil(codec::write_bool(value).map_err(WriteError::Encode)?)
            }
            (Table::Holding, DataType::Bool, Some(bit)) => {
                // One bit of a register: read, change the bit, write back.
                let on =
                    codec::encode_registers(&format, value).map_err(WriteError::Encode)?[0] != 0;
                let current = match self.link.read(unit, Table::Holding, address, 1).await {
                    Ok(Ok(Data::Registers(r))) if !r.is_empty() => r[0],
                    Ok(Ok(_)) => {
                        return Err(WriteError::Link(LinkError::Protocol(
                            Fault::Length,
                            "empty read".into(),
                        )))
                    }
                    Ok(Err(code)) => return Err(WriteError::Exception(code)),
                    Err(e) => return Err(WriteError::Link(e)),
                };
                WriteOp::Register(if on {
                    current | (1 << bit)
                } else {
                    current & !(1 << bit)
                })
            }
            (Table::Holding, _, _) => {
                let regs = codec::encode_registers(&format, value).map_err(WriteError::Encode)?;
                if regs.len() == 1 {
                    WriteOp::Register(regs[0])
                } else {
                    WriteOp::Registers(regs)
                }
            }
            _ => return Err(WriteError::NotWritable),
        };
        let retries = self.config.buses[self.bus].retries;
        let mut attempt = 0;
        loop {
            match self.link.write(unit, address, op.clone()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(code)) => return Err(WriteError::Exception(code)),
                Err(e @ LinkError::Down { .. }) => return Err(WriteError::Link(e)),
                Err(_) if attempt < retries => attempt += 1,
                Err(e) => return Err(WriteError::Link(e)),
            }
        }
    }
}

/// Cuts one point out of a block's data and decodes it.
pub fn decode_point(
    point: &crate::config::Point,
    block: &Block,
    data: &Data,
) -> Result<Value, CodecError> {
    let off = (point.address - block.start) as usize;
    match data {
        Data::Bits(bits) => bits
            .get(off)
            .map(|&b| codec::decode_bit(b))
            .ok_or(CodecError::Short {
                expected: off + 1,
                got: bits.len(),
            }),
        Data::Registers(regs) => {
            let slice = regs.get(off..).unwrap_or(&[]);
            codec::decode_registers(&point.format, slice)
        }
    }
}
