//! The Modbus client's vocabulary for what came back: the data read, the write sent, the
//! device's exception, and the link's faults (kept apart: an exception is an answer). Shared by
//! the TCP link (tokio-modbus) and our RTU framing, so neither imports the other's words.

use std::fmt;
use std::time::Duration;

/// What a read returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Bits(Vec<bool>),
    Registers(Vec<u16>),
}

/// A write request on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// FC 5.
    Coil(bool),
    /// FC 15.
    Coils(Vec<bool>),
    /// FC 6.
    Register(u16),
    /// FC 16.
    Registers(Vec<u16>),
}

/// A fault of the link, as opposed to an exception, which is the device's answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// Waiting out the reconnect backoff; `cause` is why the last attempt failed. In whole
    /// seconds: the text goes into events and the log, where a nanosecond figure is noise.
    #[error("link down ({cause}); next connect attempt in {} s", .retry_in.as_secs_f64().ceil())]
    Down { retry_in: Duration, cause: String },
    #[error("transport error: {0}")]
    Transport(String),
    #[error("protocol error: {1}")]
    Protocol(Fault, String),
}

/// What was wrong with an answer that arrived: the reason of a `device_abnormal` event
/// (`link:<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes that do not decode as a frame.
    Garbage,
    /// An RTU frame whose CRC does not match: noise on the line, a bad termination.
    Crc,
    /// An answer that began and stopped before its length (RTU).
    Truncated,
    /// The answer to another request: transaction or unit id.
    Id,
    /// Another function code than the request's.
    Function,
    /// Not the register or bit count asked for.
    Length,
    /// An answer to an earlier, timed-out request came instead of this one's (RTU): thrown
    /// away, never taken for this request's.
    Late,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Garbage => "garbage",
            Fault::Crc => "crc",
            Fault::Truncated => "truncated",
            Fault::Id => "id",
            Fault::Function => "function",
            Fault::Length => "length",
            Fault::Late => "late",
        }
    }
}

impl LinkError {
    /// A fault on a link that answers (bad frames, wrong ids), as opposed to one that does not
    /// answer at all: timeouts, refused connections and a connection or port that was lost
    /// (the offline alarm's, and the bus's when the whole link is gone; a closed connection
    /// raised both a device's `link:transport` and its bus's alarm when it counted here).
    pub fn line_fault(&self) -> Option<&'static str> {
        match self {
            LinkError::Protocol(f, _) => Some(f.as_str()),
            LinkError::Transport(_)
            | LinkError::Timeout(_)
            | LinkError::Connect { .. }
            | LinkError::Down { .. } => None,
        }
    }

    /// The label used in counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Timeout(_) => "timeout",
            LinkError::Connect { .. } | LinkError::Down { .. } => "connect",
            LinkError::Transport(_) => "transport",
            LinkError::Protocol(..) => "protocol",
        }
    }
}

/// A Modbus exception: the device's answer that it cannot do what was asked (the code of an
/// exception response, function | 0x80). Shown by the names SPEC.md uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Exception(pub u8);

impl Exception {
    pub const ILLEGAL_FUNCTION: Exception = Exception(0x01);
    pub const ILLEGAL_ADDRESS: Exception = Exception(0x02);
    pub const ILLEGAL_VALUE: Exception = Exception(0x03);
    pub const DEVICE_FAILURE: Exception = Exception(0x04);
    pub const PATH_UNAVAILABLE: Exception = Exception(0x0A);
    pub const TARGET_FAILED: Exception = Exception(0x0B);

    /// The code on the wire.
    pub fn code(self) -> u8 {
        self.0
    }

    /// A gateway's own exceptions (0A, 0B): the device behind it did not answer, not the
    /// device saying no.
    pub fn from_gateway(self) -> bool {
        matches!(self, Exception::PATH_UNAVAILABLE | Exception::TARGET_FAILED)
    }
}

/// The name SPEC.md uses (`illegal data address`).
impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0x01 => "illegal function",
            0x02 => "illegal data address",
            0x03 => "illegal data value",
            0x04 => "server device failure",
            0x05 => "acknowledge",
            0x06 => "server device busy",
            0x08 => "memory parity error",
            0x0A => "gateway path unavailable",
            0x0B => "gateway target device failed to respond",
            other => return write!(f, "exception 0x{other:02X}"),
        };
        f.write_str(name)
    }
}

/// A Modbus request's result: outer = the link, inner = the device's exception.
pub type Reply<T> = Result<Result<T, Exception>, LinkError>;
