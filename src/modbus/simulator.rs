//! The built-in device simulator: a set of Modbus units whose values move plausibly, served over
//! TCP (and RTU on a serial port), with scripted faults for tests and technicians.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::frame::{handle_pdu, mbap_frame, rtu_frame, rtu_request_len, Memory};
use crate::sync::Locked;

/// A misbehaviour a unit can be told to show, to prove the gateway survives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Never answer (a dead slave).
    Silent,
    /// Answer every request with this exception code.
    Exception(u8),
    /// Answer for another unit id.
    WrongUnit,
    /// Answer with another transaction id (TCP).
    WrongTransaction,
    /// Send half of the response, then nothing.
    Short,
    /// Send the response with extra bytes after it, inside a consistent MBAP length (TCP).
    Overlong,
    /// Send half of the response, then close the connection (TCP).
    ResetMidFrame,
    /// Corrupt the CRC (RTU).
    BadCrc,
    /// Send garbage bytes instead of a response (RTU).
    Garbage,
    /// Answer correctly after this delay.
    Delay(Duration),
    /// Answer a register read with this many registers more than asked (byte count and
    /// length consistent): a confused or malicious device.
    ExtraRegisters(u8),
    /// Answer with an exception whose function code is not the request's (0x90 to a read).
    ForeignException { function: u8, code: u8 },
}

/// One simulated unit: its register map and, optionally, the fault it is scripted to show.
#[derive(Debug)]
pub struct Unit {
    pub mem: Memory,
    pub fault: Option<Fault>,
    /// When the last requests arrived (newest last, at most [`ARRIVALS_KEPT`]): lets tests see
    /// the wire timing and how often a dead slave is tried.
    pub arrivals: VecDeque<Instant>,
}

pub const ARRIVALS_KEPT: usize = 256;

impl Unit {
    fn new(mem: Memory) -> Unit {
        Unit {
            mem,
            fault: None,
            arrivals: VecDeque::new(),
        }
    }
}

/// A device set served on one port: unit id → unit.
#[derive(Debug, Clone)]
pub struct Simulator {
    units: Arc<BTreeMap<u8, Mutex<Unit>>>,
    profile: Profile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// boiler (unit 1), pump (unit 2), power meter (unit 3): what `demo` shows.
    Demo,
    /// `n` identical units 1..=n with 40 registers each, for the polling benchmark.
    Bench(u8),
    /// `n` units 1..=n with 40 holding registers each, every one of them changing at every
    /// step (twice a second): the store's worst case, for the store benchmark and soak.
    Changing(u8),
}

impl Profile {
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "demo" => Some(Profile::Demo),
            "bench" => Some(Profile::Bench(50)),
            "changing" => Some(Profile::Changing(50)),
            _ => None,
        }
    }
}

// Demo register map (documented in README "Demo devices").
pub const BOILER: u8 = 1;
pub const PUMP: u8 = 2;
pub const METER: u8 = 3;
const BOILER_SETPOINT: usize = 2;
const PUMP_RUNNING: usize = 0;
const PUMP_SPEED_SETPOINT: usize = 0;

fn f32_regs_big(v: f32) -> [u16; 2] {
    let b = v.to_be_bytes();
    [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ]
}

fn f32_regs_little_word(v: f32) -> [u16; 2] {
    let [hi, lo] = f32_regs_big(v);
    [lo, hi]
}

impl Simulator {
    pub fn new(profile: Profile) -> Simulator {
        let mut units = BTreeMap::new();
        match profile {
            Profile::Demo => {
                let mut boiler = Memory::new(200);
                boiler.holding[BOILER_SETPOINT] = 800;
                boiler.coils[0] = true;
                let mut pump = Memory::new(200);
                pump.coils[PUMP_RUNNING] = true;
                pump.holding[PUMP_SPEED_SETPOINT] = 1450;
                let mut meter = Memory::new(200);
                let serial: Vec<u16> = b"PM-2000-0042\0\0\0\0"
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                Memory::set_regs(&mut meter.holding, 100, &serial);
                for (id, mem) in [(BOILER, boiler), (PUMP, pump), (METER, meter)] {
                    units.insert(id, Mutex::new(Unit::new(mem)));
                }
            }
            Profile::Bench(n) | Profile::Changing(n) => {
                for id in 1..=n {
                    units.insert(id, Mutex::new(Unit::new(Memory::new(64))));
                }
            }
        }
        let sim = Simulator {
            units: Arc::new(units),
            profile,
        };
        sim.step(0.0);
        sim
    }

    pub fn unit_ids(&self) -> Vec<u8> {
        self.units.keys().copied().collect()
    }

    /// Scripts (or with `None` clears) a unit's fault.
    pub fn set_fault(&self, unit: u8, fault: Option<Fault>) {
        if let Some(u) = self.units.get(&unit) {
            u.locked().fault = fault;
        }
    }

    /// Runs `f` on a unit's register map (tests set registers, read back writes).
    pub fn with_memory<R>(&self, unit: u8, f: impl FnOnce(&mut Memory) -> R) -> Option<R> {
        self.units.get(&unit).map(|u| f(&mut u.locked().mem))
    }

    /// When requests for `unit` arrived, oldest first.
    pub fn arrivals(&self, unit: u8) -> Vec<Instant> {
        self.units
            .get(&unit)
            .map(|u| u.locked().arrivals.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Moves every value to where it would be `t` seconds after start.
    pub fn step(&self, t: f64) {
        let noise = |k: f64| ((t * 7.3 + k).sin() * 0.5 + (t * 2.1 + k * 3.0).cos() * 0.5) * 0.5;
        match self.profile {
            Profile::Demo => {
                self.with_memory(BOILER, |m| {
                    let setpoint = f64::from(m.holding[BOILER_SETPOINT]) / 10.0;
                    // A slow swing below the setpoint, and every 90 s an overshoot past 90 °C
                    // lasting about 15 s: something for the alarms to catch.
                    let swing = 5.0 * (t / 20.0).sin();
                    let phase = t % 90.0;
                    let overshoot = if (60.0..75.0).contains(&phase) {
                        12.0 * ((phase - 60.0) / 15.0 * std::f64::consts::PI).sin()
                    } else {
                        0.0
                    };
                    let temp = setpoint + swing + overshoot + noise(1.0);
                    Memory::set_regs(&mut m.holding, 0, &f32_regs_big(temp as f32));
                    m.coils[0] = temp < setpoint;
                    m.discrete[0] = m.coils[0];
                    m.input[0] = (150.0 + 20.0 * (t / 30.0).sin() + noise(2.0) * 4.0) as u16;
                });
                self.with_memory(PUMP, |m| {
                    let running = m.coils[PUMP_RUNNING];
                    let target = if running {
                        f64::from(m.holding[PUMP_SPEED_SETPOINT])
                    } else {
                        0.0
                    };
                    let speed = if running {
                        target + noise(3.0) * 10.0
                    } else {
                        0.0
                    };
                    m.input[0] = speed.max(0.0) as u16;
                    m.input[1] = ((speed / 1450.0 * 320.0 + noise(4.0) * 5.0) as i16) as u16;
                    m.input[2] = (speed / 1450.0 * 425.0).max(0.0) as u16;
                });
                self.with_memory(METER, |m| {
                    let v = 230.0 + 2.0 * (t / 13.0).sin() + noise(5.0);
                    let i = 12.0 + 4.0 * (t / 40.0).sin() + noise(6.0);
                    let p = v * i * 0.92 / 1000.0;
                    Memory::set_regs(&mut m.input, 0, &f32_regs_little_word(v as f32));
                    Memory::set_regs(&mut m.input, 2, &f32_regs_little_word(i as f32));
                    Memory::set_regs(&mut m.input, 4, &f32_regs_little_word(p as f32));
                    // Energy counter in Wh, u64, little word order like the floats.
                    let wh = 1_234_567_890u64 + (t * 2.8) as u64;
                    let w = [
                        wh as u16,
                        (wh >> 16) as u16,
                        (wh >> 32) as u16,
                        (wh >> 48) as u16,
                    ];
                    Memory::set_regs(&mut m.input, 6, &w);
                });
            }
            Profile::Changing(_) => {
                let step = (t * 2.0) as u32;
                for (id, u) in self.units.iter() {
                    let m = &mut u.locked().mem;
                    for (r, v) in m.holding.iter_mut().take(40).enumerate() {
                        *v = (step.wrapping_mul(7 + r as u32) + r as u32 * 13 + u32::from(*id))
                            as u16;
                    }
                }
            }
            Profile::Bench(_) => {
                for (id, u) in self.units.iter() {
                    let m = &mut u.locked().mem;
                    // Most registers stay still, as in a plant; a few move every step.
                    let k = f64::from(*id);
                    for r in 0..4 {
                        m.holding[r] = (1000.0 + 100.0 * (t / 10.0 + k + r as f64).sin()) as u16;
                    }
                    for r in 4..40 {
                        if m.holding[r] == 0 {
                            m.holding[r] = (r as u16) * 10 + u16::from(*id);
                        }
                    }
                }
            }
        }
    }

    /// Steps the values every 500 ms until cancelled.
    ///
    /// (`Profile::Changing` moves every register by a different step each time, so no two
    /// consecutive polls read the same value.)
    pub async fn animate(self, cancel: CancellationToken) {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => self.step(start.elapsed().as_secs_f64()),
            }
        }
    }

    /// The response PDU for a unit, and the fault to apply to its framing. `None`: no such
    /// unit, so stay silent like a real RS-485 bus.
    fn answer(&self, unit: u8, pdu: &[u8]) -> Option<(Vec<u8>, Option<Fault>)> {
        let u = self.units.get(&unit)?;
        let mut u = u.locked();
        if u.arrivals.len() == ARRIVALS_KEPT {
            u.arrivals.pop_front();
        }
        u.arrivals.push_back(Instant::now());
        let fault = u.fault.clone();
        let resp = match fault {
            Some(Fault::Exception(code)) => vec![pdu.first().copied().unwrap_or(0) | 0x80, code],
            Some(Fault::ForeignException { function, code }) => vec![function | 0x80, code],
            Some(Fault::ExtraRegisters(n)) => {
                let mut r = handle_pdu(&mut u.mem, pdu);
                if matches!(r.first(), Some(3 | 4)) && r.len() >= 2 {
                    r[1] = r[1].saturating_add(2 * n);
                    r.extend(std::iter::repeat_n(0x7F, 2 * n as usize));
                }
                r
            }
            _ => handle_pdu(&mut u.mem, pdu),
        };
        Some((resp, fault))
    }

    /// Serves Modbus TCP on `listener` until cancelled; each connection is its own task.
    pub async fn serve_tcp(self, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let (stream, _) = tokio::select! {
                () = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("simulator accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let sim = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = sim.tcp_connection(stream) => {}
                }
            });
        }
    }

    async fn tcp_connection(&self, mut stream: TcpStream) {
        let mut head = [0u8; 7];
        loop {
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let tid = u16::from_be_bytes([head[0], head[1]]);
            let len = u16::from_be_bytes([head[4], head[5]]) as usize;
            let unit = head[6];
            if !(2..=254).contains(&len) {
                return; // Not Modbus: drop the connection rather than guess.
            }
            let mut pdu = vec![0u8; len - 1];
            if stream.read_exact(&mut pdu).await.is_err() {
                return;
            }
            let Some((resp, fault)) = self.answer(unit, &pdu) else {
                continue;
            };
            let frame = match &fault {
                Some(Fault::WrongUnit) => mbap_frame(tid, unit.wrapping_add(1), &resp),
                Some(Fault::WrongTransaction) => mbap_frame(tid.wrapping_add(1), unit, &resp),
                Some(Fault::Overlong) => {
                    let mut r = resp.clone();
                    r.extend_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
                    mbap_frame(tid, unit, &r)
                }
                _ => mbap_frame(tid, unit, &resp),
            };
            match fault {
                Some(Fault::Silent) => {}
                Some(Fault::Short) => {
                    let _ = stream.write_all(&frame[..frame.len() / 2]).await;
                }
                Some(Fault::ResetMidFrame) => {
                    let _ = stream.write_all(&frame[..frame.len() / 2]).await;
                    return;
                }
                Some(Fault::Delay(d)) => {
                    tokio::time::sleep(d).await;
                    if stream.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                _ => {
                    if stream.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Serves Modbus RTU on a byte stream (a serial port, or one end of a pty pair).
    pub async fn serve_rtu<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut port: S,
        cancel: CancellationToken,
    ) {
        let mut buf: Vec<u8> = Vec::with_capacity(512);
        let mut chunk = [0u8; 256];
        loop {
            let n = tokio::select! {
                () = cancel.cancelled() => return,
                r = port.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(len) = rtu_request_len(&buf) {
                let Ok(len) = len else {
                    buf.clear(); // An unknown function: resynchronise on the next request.
                    break;
                };
                if buf.len() < len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..len).collect();
                if super::frame::crc16(&frame[..len - 2]).to_le_bytes() != frame[len - 2..] {
                    buf.clear();
                    break;
                }
                let unit = frame[0];
                let Some((resp, fault)) = self.answer(unit, &frame[1..len - 2]) else {
                    continue;
                };
                let mut out = match fault {
                    Some(Fault::WrongUnit) => rtu_frame(unit.wrapping_add(1), &resp),
                    _ => rtu_frame(unit, &resp),
                };
                match fault {
                    Some(Fault::Silent) => continue,
                    Some(Fault::BadCrc) => {
                        let l = out.len();
                        out[l - 1] ^= 0xFF;
                    }
                    Some(Fault::Garbage) => out = vec![0xFF, 0x00, 0x13, 0x37, 0xAA, 0x55, 0x01],
                    Some(Fault::Short) => out.truncate(out.len() / 2),
                    Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
                    _ => {}
                }
                if port.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Binds and serves the simulator's RTU framing over TCP (a serial server in transparent mode)
/// in the background, one connection at a time as a serial line has; returns the address.
pub async fn spawn_rtu_over_tcp(
    sim: Simulator,
    listen: &str,
    cancel: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let serving = cancel.clone();
    let server = sim.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = serving.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
            };
            let _ = stream.set_nodelay(true);
            server.clone().serve_rtu(stream, serving.clone()).await;
        }
    });
    tokio::spawn(sim.animate(cancel));
    Ok(addr)
}

/// Binds and serves the simulator over TCP in the background; returns the bound address.
pub async fn spawn_tcp(
    sim: Simulator,
    listen: &str,
    cancel: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(sim.clone().serve_tcp(listener, cancel.clone()));
    tokio::spawn(sim.animate(cancel));
    Ok(addr)
}
