//! The Modbus RTU client framing, on a serial port or a TCP socket to a serial server: one
//! request on the line at a time, the 3.5-character silence between frames, an answer ended by
//! its expected length, then checked by CRC, unit and function code.
//!
//! Written here rather than taken from tokio-modbus because its RTU decoder drops a frame with
//! a bad CRC and waits on (a CRC error became a timeout, so no `link:crc`), and it leaves the
//! silence between frames to the operating system's timing.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::codec::Table;
use super::frame::{crc16, rtu_frame};
use super::reply::{Data, Exception, Fault, LinkError, Reply, WriteOp};
use crate::config::Parity;

/// A byte stream an RTU line runs on: a serial port, or TCP to a serial server.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// After a fault, the line must have been quiet this long before the next request, so that a
/// late or partial answer is read and thrown away rather than taken for the next one.
const RECOVERY_QUIET: Duration = Duration::from_millis(20);

/// The longest RTU frame (Modbus serial line spec: 256 bytes).
const MAX_FRAME: usize = 256;

/// The time one character takes on the wire and the silence that must separate two frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTiming {
    pub char_time: Duration,
    /// 3.5 characters; a fixed 1.75 ms above 19200 baud (Modbus over serial line, 2.5.1.1).
    pub silence: Duration,
}

impl LineTiming {
    pub fn serial(baud: u32, parity: Parity, data_bits: u8, stop_bits: u8) -> LineTiming {
        let bits =
            1 + u32::from(data_bits) + u32::from(parity != Parity::None) + u32::from(stop_bits);
        let char_time =
            Duration::from_nanos(u64::from(bits) * 1_000_000_000 / u64::from(baud.max(1)));
        let silence = if baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            char_time * 7 / 2
        };
        LineTiming { char_time, silence }
    }

    /// A TCP socket to a serial server: the server keeps the line's timing.
    pub const NONE: LineTiming = LineTiming {
        char_time: Duration::ZERO,
        silence: Duration::ZERO,
    };
}

/// An RTU client on one line.
pub struct Rtu {
    io: Box<dyn Io>,
    timing: LineTiming,
    buf: Vec<u8>,
    /// When the last byte seen on the line (sent or received) ended.
    line_busy_until: Instant,
    /// The next request waits for `RECOVERY_QUIET` instead of the silence.
    recovering: bool,
    /// Answers that arrived with a gap inside (see [`GAP_SLACK`]), not yet counted.
    gaps: u64,
    /// Requests that timed out, whose answers may still come (newest last).
    owed: Vec<Owed>,
    /// Late answers and stray bytes thrown away before or instead of an answer, not yet
    /// counted.
    late: u64,
}

/// A request that timed out: for one more deadline after it, an answer of its shape is taken
/// for its late answer, never for another request's. RTU frames carry no transaction id, so a
/// unit answering 650 ms into a 500 ms timeout would otherwise have its holding 0-3 filed as
/// the next request's holding 100-103.
struct Owed {
    unit: u8,
    pdu: Vec<u8>,
    /// The length of its answer frame (an exception's is 5 whatever the request).
    answer_len: usize,
    until: Instant,
}

/// At most this many timed-out requests are remembered (a dead unit times out on every probe).
const MAX_OWED: usize = 8;

/// A gap inside an answer counts past 1.5 characters (the spec's t1.5) plus this: a USB
/// adapter hands bytes over in transfers, and a pty wakes its reader late.
const GAP_SLACK: Duration = Duration::from_millis(2);

impl Rtu {
    pub fn new(io: Box<dyn Io>, timing: LineTiming) -> Rtu {
        Rtu {
            io,
            timing,
            buf: Vec::with_capacity(MAX_FRAME),
            line_busy_until: Instant::now(),
            recovering: false,
            gaps: 0,
            owed: Vec::new(),
            late: 0,
        }
    }

    /// Late answers and stray bytes thrown away since the last call.
    pub fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    /// Answers with a gap inside since the last call.
    pub fn take_gaps(&mut self) -> u64 {
        std::mem::take(&mut self.gaps)
    }

    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        address: u16,
        count: u16,
        deadline: Duration,
    ) -> Reply<Data> {
        let fc = match table {
            Table::Coil => 0x01,
            Table::Discrete => 0x02,
            Table::Holding => 0x03,
            Table::Input => 0x04,
        };
        let mut pdu = vec![fc];
        pdu.extend_from_slice(&address.to_be_bytes());
        pdu.extend_from_slice(&count.to_be_bytes());
        let answer = match self.call(unit, &pdu, deadline).await? {
            Ok(a) => a,
            Err(code) => return Ok(Err(code)),
        };
        // answer = [fc, byte count, data…]; the byte count was checked against the length.
        let data = &answer[2..];
        if matches!(table, Table::Coil | Table::Discrete) {
            if data.len() != usize::from(count).div_ceil(8) {
                return Err(self.fault(
                    Fault::Length,
                    format!(
                        "answer has {} bytes of bits, the request {count} bits",
                        data.len()
                    ),
                ));
            }
            let bits = (0..usize::from(count))
                .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
                .collect();
            Ok(Ok(Data::Bits(bits)))
        } else {
            if data.len() != usize::from(count) * 2 {
                return Err(self.fault(
                    Fault::Length,
                    format!(
                        "answer has {} registers, the request {count}",
                        data.len() / 2
                    ),
                ));
            }
            let regs = data
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect();
            Ok(Ok(Data::Registers(regs)))
        }
    }

    pub async fn write(
        &mut self,
        unit: u8,
        address: u16,
        op: &WriteOp,
        deadline: Duration,
    ) -> Reply<()> {
        let pdu = write_pdu(address, op);
        let answer = match self.call(unit, &pdu, deadline).await? {
            Ok(a) => a,
            Err(code) => return Ok(Err(code)),
        };
        // A write's answer echoes the request's address and value (or count).
        if answer[1..] != pdu[1..5] {
            return Err(self.fault(
                Fault::Garbage,
                "the write's answer does not echo the request".into(),
            ));
        }
        Ok(Ok(()))
    }

    fn fault(&mut self, fault: Fault, text: String) -> LinkError {
        self.recovering = true;
        LinkError::Protocol(fault, text)
    }

    /// Sends one request and returns the answer's PDU (function code first), or the exception
    /// code. The whole exchange, silence included, is under `deadline`. Before the request
    /// the line is drained (bytes already buffered or arriving within the silence are
    /// thrown away and counted); after it, an answer that may be a timed-out request's late
    /// one is thrown away too, and the wait goes on for this request's own.
    async fn call(
        &mut self,
        unit: u8,
        pdu: &[u8],
        deadline: Duration,
    ) -> Result<Result<Vec<u8>, Exception>, LinkError> {
        let until = Instant::now() + deadline;
        let quiet = if self.recovering {
            self.timing.silence.max(RECOVERY_QUIET)
        } else {
            self.timing.silence
        };
        self.recovering = false;
        let now = Instant::now();
        self.owed.retain(|o| o.until > now);
        let drained = match timeout_at(until, self.drain(quiet)).await {
            Err(_) => return Err(self.timeout(deadline)),
            Ok(Err(e)) => return Err(transport(&e)),
            Ok(Ok(n)) => n,
        };
        self.late += u64::from(drained > 0);
        let frame = rtu_frame(unit, pdu);
        match timeout_at(until, self.io.write_all(&frame)).await {
            Err(_) => return Err(self.timeout(deadline)),
            Ok(Err(e)) => return Err(transport(&e)),
            Ok(Ok(())) => {}
        }
        // write_all returns once the bytes are in the driver's buffer, not on the wire.
        self.line_busy_until = Instant::now() + self.timing.char_time * frame.len() as u32;
        self.buf.clear();
        let mut thrown = 0;
        loop {
            let len = match self.read_frame(until, deadline).await {
                Err(LinkError::Timeout(_)) if thrown > 0 => {
                    self.owe(unit, pdu, deadline);
                    return Err(self.fault(
                        Fault::Late,
                        format!("{thrown} late answer(s) to an earlier request thrown away, and none to this one within {deadline:?}"),
                    ));
                }
                Err(e @ LinkError::Timeout(_)) => {
                    self.owe(unit, pdu, deadline);
                    return Err(e);
                }
                other => other?,
            };
            if self.owed_answer(unit, pdu, len) {
                thrown += 1;
                self.late += 1;
                self.buf.drain(..len);
                continue;
            }
            return self.check(unit, pdu[0], len);
        }
    }

    /// Remembers a timed-out request: its answer may come late.
    fn owe(&mut self, unit: u8, pdu: &[u8], deadline: Duration) {
        if self.owed.len() == MAX_OWED {
            self.owed.remove(0);
        }
        self.owed.push(Owed {
            unit,
            pdu: pdu.to_vec(),
            answer_len: answer_len(pdu),
            until: Instant::now() + deadline,
        });
    }

    /// Whether the whole, CRC-correct frame at the start of the buffer may be a timed-out
    /// request's late answer rather than this request's: from that request's unit, with its
    /// function and length, and not the same request (whose late answer holds the same
    /// registers, so is right either way). The entry it matches is settled.
    fn owed_answer(&mut self, unit: u8, pdu: &[u8], len: usize) -> bool {
        let frame = &self.buf[..len];
        if crc16(&frame[..len - 2]).to_le_bytes() != frame[len - 2..] {
            return false;
        }
        let (from, fc) = (frame[0], frame[1]);
        let found = self.owed.iter().position(|o| {
            o.unit == from
                && o.pdu[0] == fc & 0x7F
                && (fc & 0x80 != 0 || o.answer_len == len)
                && (from != unit || o.pdu != pdu)
        });
        if let Some(i) = found {
            self.owed.remove(i);
        }
        found.is_some()
    }

    fn timeout(&mut self, deadline: Duration) -> LinkError {
        self.recovering = true;
        LinkError::Timeout(deadline)
    }

    /// Throws away what the line has already delivered, then whatever arrives until it has
    /// been quiet for `quiet`. Returns the bytes thrown away.
    async fn drain(&mut self, quiet: Duration) -> std::io::Result<usize> {
        let mut scratch = [0u8; 64];
        let mut thrown = 0;
        // Bytes already buffered (by the OS, the adapter, a serial server) are read at once,
        // even when the silence has long passed: they are no answer to the next request.
        loop {
            match tokio::time::timeout(Duration::ZERO, self.io.read(&mut scratch)).await {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => {
                    thrown += n;
                    self.line_busy_until = Instant::now();
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        loop {
            let at = self.line_busy_until + quiet;
            if quiet.is_zero() || Instant::now() >= at {
                return Ok(thrown);
            }
            let read = tokio::select! {
                r = self.io.read(&mut scratch) => r,
                () = sleep_precisely(at) => return Ok(thrown),
            };
            match read {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    thrown += n;
                    self.line_busy_until = Instant::now();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until the frame at the start of the buffer is as long as its function code says,
    /// whatever number of reads it takes. Returns that length; bytes after it stay in the
    /// buffer.
    async fn read_frame(&mut self, until: Instant, deadline: Duration) -> Result<usize, LinkError> {
        // Past this, a pause between two bytes of one answer is a gap (serial lines only).
        let gap = (!self.timing.char_time.is_zero())
            .then(|| self.timing.char_time.mul_f64(1.5) + GAP_SLACK);
        let mut gapped = false;
        loop {
            match expected_len(&self.buf) {
                Some(Ok(n)) if self.buf.len() >= n => {
                    self.gaps += u64::from(gapped);
                    return Ok(n);
                }
                Some(Err(())) => {
                    return Err(self.fault(Fault::Garbage, "answer is not a Modbus frame".into()));
                }
                _ => {}
            }
            let started = !self.buf.is_empty();
            let read = timeout_at(until, self.io.read_buf(&mut self.buf)).await;
            match read {
                Err(_) if self.buf.is_empty() => return Err(self.timeout(deadline)),
                Err(_) => {
                    let got = self.buf.len();
                    let want = expected_len(&self.buf).and_then(Result::ok);
                    let of = want.map_or(String::new(), |w| format!(" of {w}"));
                    return Err(self.fault(
                        Fault::Truncated,
                        format!("answer stopped after {got}{of} bytes"),
                    ));
                }
                Ok(Ok(0)) => return Err(transport(&std::io::ErrorKind::UnexpectedEof.into())),
                Ok(Ok(_)) => {
                    let now = Instant::now();
                    if started && gap.is_some_and(|g| now > self.line_busy_until + g) {
                        gapped = true;
                    }
                    self.line_busy_until = now;
                }
                Ok(Err(e)) => return Err(transport(&e)),
            }
        }
    }

    /// CRC first (a corrupted byte says nothing reliable), then unit, then function code.
    fn check(
        &mut self,
        unit: u8,
        fc: u8,
        len: usize,
    ) -> Result<Result<Vec<u8>, Exception>, LinkError> {
        let frame = &self.buf[..len];
        let (body, crc) = frame.split_at(len - 2);
        if crc16(body).to_le_bytes() != crc {
            return Err(self.fault(Fault::Crc, "answer failed its CRC check".into()));
        }
        if body[0] != unit {
            let other = body[0];
            return Err(self.fault(
                Fault::Id,
                format!("answer is from unit {other}, the request to {unit}"),
            ));
        }
        let got = body[1];
        if got & 0x7F != fc {
            return Err(self.fault(
                Fault::Function,
                format!("answer has function code 0x{got:02X}, the request 0x{fc:02X}"),
            ));
        }
        if got & 0x80 != 0 {
            return Ok(Err(Exception(body[2])));
        }
        Ok(Ok(body[1..].to_vec()))
    }
}

/// A wait this short is timed by the OS, not by tokio's timer (see [`sleep_precisely`]).
const PRECISE_BELOW: Duration = Duration::from_millis(2);

/// Sleeps until `at`. Tokio's timer rounds every deadline up to its next millisecond tick, so
/// the 1.75 ms silence above 19200 baud became up to 3 ms — 14 % of an exchange of 10
/// registers at 115200. A wait under [`PRECISE_BELOW`] goes to a blocking-pool thread that
/// sleeps for exactly that long (no spinning: the CPU stays idle).
async fn sleep_precisely(at: Instant) {
    let left = at.saturating_duration_since(Instant::now());
    if left > PRECISE_BELOW {
        tokio::time::sleep_until(at).await;
    } else if !left.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
    }
}

fn transport(e: &std::io::Error) -> LinkError {
    LinkError::Transport(super::link::lost(e))
}

fn write_pdu(address: u16, op: &WriteOp) -> Vec<u8> {
    let (fc, second) = match op {
        WriteOp::Coil(on) => (0x05, if *on { 0xFF00 } else { 0 }),
        WriteOp::Register(v) => (0x06, *v),
        WriteOp::Coils(bits) => (0x0F, bits.len() as u16),
        WriteOp::Registers(regs) => (0x10, regs.len() as u16),
    };
    let mut pdu = vec![fc];
    pdu.extend_from_slice(&address.to_be_bytes());
    pdu.extend_from_slice(&second.to_be_bytes());
    match op {
        WriteOp::Coil(_) | WriteOp::Register(_) => {}
        WriteOp::Coils(bits) => {
            let mut packed = vec![0u8; bits.len().div_ceil(8)];
            for (i, _) in bits.iter().enumerate().filter(|(_, on)| **on) {
                packed[i / 8] |= 1 << (i % 8);
            }
            pdu.push(packed.len() as u8);
            pdu.extend(packed);
        }
        WriteOp::Registers(regs) => {
            pdu.push((regs.len() * 2) as u8);
            for r in regs {
                pdu.extend_from_slice(&r.to_be_bytes());
            }
        }
    }
    pdu
}

/// The length of the answer frame a request's PDU asks for (5 bytes for an exception).
fn answer_len(pdu: &[u8]) -> usize {
    let count = usize::from(u16::from_be_bytes([pdu[3], pdu[4]]));
    match pdu[0] {
        0x01 | 0x02 => 5 + count.div_ceil(8),
        0x03 | 0x04 => 5 + 2 * count,
        _ => 8,
    }
}

/// The length of the answer frame at the start of `buf`, once its function code (and, for
/// reads, its byte count) has arrived; `Err` for a function code no answer can carry.
fn expected_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let fc = *buf.get(1)?;
    if fc & 0x80 != 0 {
        // unit, function, exception code, CRC
        return Some(Ok(5));
    }
    match fc {
        0x01..=0x04 => buf.get(2).map(|&n| Ok(5 + usize::from(n))),
        0x05 | 0x06 | 0x0F | 0x10 => Some(Ok(8)),
        _ => Some(Err(())),
    }
}

#[cfg(test)]
mod tests;
