//! A serial line with a baud rate, for the RTU tests and benches: socat's pty pair carries bytes
//! at memory speed, so this relay stands between the gateway's pty and an RTU server on TCP
//! (pymodbus's RTU framer, or the simulator's) and puts each byte on the far side no earlier
//! than its time on the wire at the line's baud rate and framing. A slave answers 3.5
//! characters after its request ended (when it can know that it did) plus its turnaround, can corrupt or drop answer bytes on request, and records the
//! silence the gateway left on the line before each request. Plain threads, not tasks: a
//! character at 115200 baud is 87 µs, finer than tokio's 1 ms timer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A line's speed and framing, and the device's think time.
#[derive(Debug, Clone, Copy)]
pub struct LineSpec {
    pub baud: u32,
    /// Bits per character: start, data, parity, stop (8E1 and 8N2 are 11, 8N1 is 10).
    pub bits: u32,
    /// From the end of a request to the first byte of its answer.
    pub turnaround: Duration,
}

impl LineSpec {
    pub fn char_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.bits) / f64::from(self.baud))
    }

    /// The Modbus serial line spec's silence between frames: 3.5 characters, and a fixed
    /// 1.75 ms above 19200 baud.
    pub fn silence(&self) -> Duration {
        if self.baud > 19200 {
            Duration::from_micros(1750)
        } else {
            self.char_time().mul_f64(3.5)
        }
    }

    /// The fewest seconds one request and its answer take on this line: both frames' bytes,
    /// the silence before each, and the turnaround.
    pub fn exchange(&self, request_bytes: u32, answer_bytes: u32) -> Duration {
        self.char_time() * (request_bytes + answer_bytes) + self.silence() * 2 + self.turnaround
    }
}

#[derive(Debug, Default)]
struct State {
    /// When the last byte of the last frame, either way, was off the wire.
    frame_end: Option<Instant>,
    /// The silence before each request (its first byte − the end of the frame before it).
    silences: Vec<Duration>,
    requests: u64,
    /// Requests by unit id (a frame's first byte).
    per_unit: Vec<u64>,
    /// A unit whose requests never reach the server: a dead slave on the line.
    muted: Option<u8>,
    /// Answer bytes still to flip (a CRC error) or to swallow (a truncated answer).
    corrupt: u32,
    drop: u32,
    /// A pause inside the next answer, after its first byte (a gap the spec forbids).
    stall: Option<Duration>,
}

/// The relay; the gateway opens `port` (`kind = "rtu"`), or connects to it (`start_tcp`: a
/// serial server, `kind = "rtu_over_tcp"`). Ends with its socat when dropped.
pub struct SlowLine {
    pub port: String,
    pub spec: LineSpec,
    state: Arc<Mutex<State>>,
    socat: Option<std::process::Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for SlowLine {
    fn drop(&mut self) {
        if let Some(mut socat) = self.socat.take() {
            let _ = socat.kill();
            let _ = socat.wait();
        }
    }
}

/// The relay's state: a thread that panicked left nothing half-written worth refusing.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

impl SlowLine {
    /// A line to the RTU server at `device`; `None` when socat is not installed.
    pub fn start(spec: LineSpec, device: SocketAddr) -> Option<SlowLine> {
        let dir = tempfile::tempdir().ok()?;
        let port = dir.path().join("gateway").display().to_string();
        let ours = dir.path().join("line").display().to_string();
        let socat = std::process::Command::new("socat")
            .args([
                format!("pty,raw,echo=0,link={port}"),
                format!("pty,raw,echo=0,link={ours}"),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut line = SlowLine {
            port,
            spec,
            state: Arc::default(),
            socat: Some(socat),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(std::path::Path::new(&line.port).exists() && std::path::Path::new(&ours).exists()) {
            let exited = line.socat.as_mut().map(std::process::Child::try_wait);
            if Instant::now() > deadline || matches!(exited, Some(Ok(Some(_)))) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ours)
            .ok()?;
        let tcp = TcpStream::connect(device).ok()?;
        tcp.set_nodelay(true).ok()?;
        let (pty_in, tcp_out) = (pty.try_clone().ok()?, tcp.try_clone().ok()?);
        let state = line.state.clone();
        std::thread::spawn(move || requests(spec, pty_in, tcp_out, &state));
        let state = line.state.clone();
        std::thread::spawn(move || answers(spec, tcp, pty, &state));
        Some(line)
    }

    /// The same line behind a serial server: the gateway connects to `port` (`host:port`) and
    /// speaks RTU over TCP, one connection at a time.
    pub fn start_tcp(spec: LineSpec, device: SocketAddr) -> Option<SlowLine> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        let line = SlowLine {
            port: listener.local_addr().ok()?.to_string(),
            spec,
            state: Arc::default(),
            socat: None,
            _dir: None,
        };
        let state = line.state.clone();
        std::thread::spawn(move || {
            for gateway in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(device) else {
                    return;
                };
                let _ = (gateway.set_nodelay(true), server.set_nodelay(true));
                let (Ok(g2), Ok(s2)) = (gateway.try_clone(), server.try_clone()) else {
                    return;
                };
                let st = state.clone();
                std::thread::spawn(move || requests(spec, gateway, s2, &st));
                let st = state.clone();
                std::thread::spawn(move || answers(spec, server, g2, &st));
            }
        });
        Some(line)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.state().requests
    }

    /// Requests to `unit` seen so far.
    pub fn requests_to(&self, unit: u8) -> u64 {
        self.state()
            .per_unit
            .get(usize::from(unit))
            .copied()
            .unwrap_or(0)
    }

    /// From now on `unit` is dead: its requests never reach the server.
    pub fn mute(&self, unit: u8) {
        self.state().muted = Some(unit);
    }

    /// The silences before the requests seen so far, emptied.
    pub fn take_silences(&self) -> Vec<Duration> {
        std::mem::take(&mut self.state().silences)
    }

    /// Flips the next `n` answer bytes (a CRC error on the gateway's side).
    pub fn corrupt(&self, n: u32) {
        self.state().corrupt = n;
    }

    /// Pauses the next answer for `d` after its first byte.
    pub fn stall(&self, d: Duration) {
        self.state().stall = Some(d);
    }

    /// Swallows the next `n` answer bytes.
    pub fn drop_bytes(&self, n: u32) {
        self.state().drop = n;
    }
}

/// Gateway → device: a frame starts with a byte that comes after the line has been idle for
/// more than 1.5 characters; it reaches the device when its last byte is off the wire.
fn requests(spec: LineSpec, mut from: impl Read, mut to: impl Write, state: &Mutex<State>) {
    let char_time = spec.char_time();
    let mut buf = [0u8; 512];
    let mut wire_free = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let arrived = Instant::now();
        let muted = {
            let mut s = lock(state);
            let idle = wire_free + char_time.mul_f64(1.5);
            if arrived > idle {
                s.requests += 1;
                if s.per_unit.is_empty() {
                    s.per_unit = vec![0; 256];
                }
                s.per_unit[usize::from(buf[0])] += 1;
                if let Some(end) = s.frame_end {
                    s.silences.push(arrived.saturating_duration_since(end));
                }
            }
            s.muted == Some(buf[0])
        };
        wire_free = wire_free.max(arrived) + char_time * n as u32;
        sleep_until(wire_free);
        lock(state).frame_end = Some(wire_free);
        // A dead slave's request is on the wire, but nobody answers it.
        if !muted && to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Device → gateway: the first byte after an idle line waits out the turnaround; each byte is
/// written when it would have arrived.
fn answers(spec: LineSpec, mut from: impl Read, mut to: impl Write, state: &Mutex<State>) {
    let char_time = spec.char_time();
    let mut buf = [0u8; 512];
    let mut wire_free = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = Instant::now();
        let fresh = now > wire_free;
        if fresh {
            // A new answer: a slave knows its request ended after 3.5 characters of silence,
            // then thinks for the turnaround (the server's own latency, within that, does not
            // count twice).
            let asked = lock(state).frame_end.unwrap_or(now);
            wire_free = now.max(asked + spec.silence() + spec.turnaround);
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            wire_free += char_time;
            if fresh && i == 1 {
                let stall = lock(state).stall.take();
                wire_free += stall.unwrap_or_default();
            }
            sleep_until(wire_free);
            let byte = {
                let mut s = lock(state);
                s.frame_end = Some(wire_free);
                if s.drop > 0 {
                    s.drop -= 1;
                    None
                } else if s.corrupt > 0 {
                    s.corrupt -= 1;
                    Some(b ^ 0xFF)
                } else {
                    Some(b)
                }
            };
            if let Some(b) = byte {
                if to.write_all(&[b]).is_err() {
                    return;
                }
            }
        }
    }
}
