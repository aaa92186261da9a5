//! A master's request as the server end reads it: a PDU checked into a typed [`Request`] (or
//! the exception it earns), and the answers' PDUs. The simulator and the Modbus server share it.

use super::reply::Exception;
use crate::model::format::Table;

/// Exception codes a server answers with, as the bytes of its answer.
pub const ILLEGAL_FUNCTION: u8 = Exception::ILLEGAL_FUNCTION.0;
pub const ILLEGAL_ADDRESS: u8 = Exception::ILLEGAL_ADDRESS.0;
pub const ILLEGAL_VALUE: u8 = Exception::ILLEGAL_VALUE.0;
pub const DEVICE_FAILURE: u8 = Exception::DEVICE_FAILURE.0;
pub const PATH_UNAVAILABLE: u8 = Exception::PATH_UNAVAILABLE.0;
pub const TARGET_FAILED: u8 = Exception::TARGET_FAILED.0;

/// The most a request may ask for, by the Modbus application protocol (1.1b3, 6.1–6.12).
const MAX_READ_BITS: u16 = 2000;
const MAX_READ_REGS: u16 = 125;
const MAX_WRITE_BITS: u16 = 1968;
const MAX_WRITE_REGS: u16 = 123;

/// One checked request: counts within the protocol's limits, the range inside the 65,536
/// addresses, the data exactly as long as its count says.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// FC 1, 2, 3, 4.
    Read {
        table: Table,
        start: u16,
        count: u16,
    },
    /// FC 5.
    WriteCoil { addr: u16, value: bool },
    /// FC 6.
    WriteRegister { addr: u16, value: u16 },
    /// FC 15.
    WriteCoils { start: u16, values: Vec<bool> },
    /// FC 16.
    WriteRegisters { start: u16, values: Vec<u16> },
}

impl Request {
    /// The PDU's function code.
    pub fn function(&self) -> u8 {
        match self {
            Request::Read { table, .. } => table.read_function(),
            Request::WriteCoil { .. } => 0x05,
            Request::WriteRegister { .. } => 0x06,
            Request::WriteCoils { .. } => 0x0F,
            Request::WriteRegisters { .. } => 0x10,
        }
    }

    /// The write's table, first address and width; `None` for a read.
    pub fn write_range(&self) -> Option<(Table, u16, u16)> {
        match self {
            Request::Read { .. } => None,
            Request::WriteCoil { addr, .. } => Some((Table::Coil, *addr, 1)),
            Request::WriteRegister { addr, .. } => Some((Table::Holding, *addr, 1)),
            Request::WriteCoils { start, values } => {
                Some((Table::Coil, *start, values.len() as u16))
            }
            Request::WriteRegisters { start, values } => {
                Some((Table::Holding, *start, values.len() as u16))
            }
        }
    }

    /// The words a write carries (a coil as 0 or 1), in address order.
    pub fn write_words(&self) -> Vec<u16> {
        match self {
            Request::Read { .. } => Vec::new(),
            Request::WriteCoil { value, .. } => vec![u16::from(*value)],
            Request::WriteRegister { value, .. } => vec![*value],
            Request::WriteCoils { values, .. } => values.iter().map(|&b| u16::from(b)).collect(),
            Request::WriteRegisters { values, .. } => values.clone(),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// `start..start+count` within the 65,536 addresses, `count` in `1..=max`.
fn range(start: u16, count: u16, max: u16) -> Result<(), u8> {
    if count == 0 || count > max {
        Err(ILLEGAL_VALUE)
    } else if u32::from(start) + u32::from(count) > 0x1_0000 {
        Err(ILLEGAL_ADDRESS)
    } else {
        Ok(())
    }
}

/// Reads a request PDU. `Err(code)` is the exception to answer (the connection lives on): an
/// unknown function 01, a count or a length that does not add up 03, past the last address 02.
pub fn parse(pdu: &[u8]) -> Result<Request, u8> {
    let (&fc, body) = pdu.split_first().ok_or(ILLEGAL_FUNCTION)?;
    let fixed = |len: usize| {
        if body.len() == len {
            Ok(())
        } else {
            Err(ILLEGAL_VALUE)
        }
    };
    match fc {
        0x01..=0x04 => {
            fixed(4)?;
            let (start, count) = (be16(body, 0), be16(body, 2));
            let table = match fc {
                1 => Table::Coil,
                2 => Table::Discrete,
                3 => Table::Holding,
                _ => Table::Input,
            };
            let max = if table.is_bits() {
                MAX_READ_BITS
            } else {
                MAX_READ_REGS
            };
            range(start, count, max)?;
            Ok(Request::Read {
                table,
                start,
                count,
            })
        }
        0x05 => {
            fixed(4)?;
            let value = match be16(body, 2) {
                0xFF00 => true,
                0x0000 => false,
                _ => return Err(ILLEGAL_VALUE),
            };
            Ok(Request::WriteCoil {
                addr: be16(body, 0),
                value,
            })
        }
        0x06 => {
            fixed(4)?;
            Ok(Request::WriteRegister {
                addr: be16(body, 0),
                value: be16(body, 2),
            })
        }
        0x0F | 0x10 => {
            if body.len() < 5 {
                return Err(ILLEGAL_VALUE);
            }
            let (start, count, bytes) = (be16(body, 0), be16(body, 2), usize::from(body[4]));
            let (max, need) = if fc == 0x0F {
                (MAX_WRITE_BITS, usize::from(count).div_ceil(8))
            } else {
                (MAX_WRITE_REGS, usize::from(count) * 2)
            };
            if count == 0 || count > max || bytes != need || body.len() != 5 + bytes {
                return Err(ILLEGAL_VALUE);
            }
            range(start, count, max)?;
            let data = &body[5..];
            Ok(if fc == 0x0F {
                let values = (0..usize::from(count))
                    .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
                    .collect();
                Request::WriteCoils { start, values }
            } else {
                let values = (0..usize::from(count)).map(|i| be16(data, i * 2)).collect();
                Request::WriteRegisters { start, values }
            })
        }
        _ => Err(ILLEGAL_FUNCTION),
    }
}

/// The exception PDU for function `fc`.
pub fn exception(fc: u8, code: u8) -> Vec<u8> {
    vec![fc | 0x80, code]
}

/// The answer to a read of bits.
pub fn bits_reply(fc: u8, bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; 2 + bits.len().div_ceil(8)];
    out[0] = fc;
    out[1] = (out.len() - 2) as u8;
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[2 + i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// The answer to a read of registers.
pub fn registers_reply(fc: u8, words: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + words.len() * 2);
    out.push(fc);
    out.push((words.len() * 2) as u8);
    for w in words {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out
}

/// The answer to a write: FC 5/6 echo the address and value, FC 15/16 the start and count.
pub fn write_reply(request: &Request) -> Vec<u8> {
    let (a, b) = match request {
        Request::Read { start, count, .. } => (*start, *count),
        Request::WriteCoil { addr, value } => (*addr, if *value { 0xFF00 } else { 0 }),
        Request::WriteRegister { addr, value } => (*addr, *value),
        Request::WriteCoils { start, values } => (*start, values.len() as u16),
        Request::WriteRegisters { start, values } => (*start, values.len() as u16),
    };
    let mut out = vec![request.function()];
    out.extend_from_slice(&a.to_be_bytes());
    out.extend_from_slice(&b.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_anything_is_read_or_written() {
        assert_eq!(
            parse(&[3, 0, 10, 0, 2]),
            Ok(Request::Read {
                table: Table::Holding,
                start: 10,
                count: 2
            })
        );
        assert_eq!(parse(&[3, 0, 0, 0, 0]), Err(ILLEGAL_VALUE));
        assert_eq!(parse(&[3, 0, 0, 0, 126]), Err(ILLEGAL_VALUE));
        assert_eq!(parse(&[4, 0xFF, 0xFF, 0, 2]), Err(ILLEGAL_ADDRESS));
        assert_eq!(parse(&[3, 0, 0, 0]), Err(ILLEGAL_VALUE));
        assert_eq!(parse(&[0x2B, 14, 1, 0]), Err(ILLEGAL_FUNCTION));
        assert_eq!(parse(&[]), Err(ILLEGAL_FUNCTION));
        assert_eq!(parse(&[5, 0, 1, 0x12, 0x34]), Err(ILLEGAL_VALUE));
        // FC 15 whose count asks for more bits than its bytes carry: refused, not read past.
        assert_eq!(parse(&[0x0F, 0, 0, 0, 16, 1, 0xFF]), Err(ILLEGAL_VALUE));
        assert_eq!(
            parse(&[0x0F, 0, 4, 0, 3, 1, 0b101]),
            Ok(Request::WriteCoils {
                start: 4,
                values: vec![true, false, true]
            })
        );
        // FC 16 with a count whose double does not fit 16 bits.
        assert_eq!(parse(&[0x10, 0, 0, 0x80, 0, 0]), Err(ILLEGAL_VALUE));
        assert_eq!(
            parse(&[0x10, 0, 1, 0, 2, 4, 0, 7, 0, 8]),
            Ok(Request::WriteRegisters {
                start: 1,
                values: vec![7, 8]
            })
        );
    }

    #[test]
    fn answers_are_framed_as_the_protocol_says() {
        assert_eq!(bits_reply(1, &[false, true]), vec![1, 1, 0b10]);
        assert_eq!(registers_reply(3, &[0x1234]), vec![3, 2, 0x12, 0x34]);
        let w = Request::WriteCoil {
            addr: 9,
            value: true,
        };
        assert_eq!(write_reply(&w), vec![5, 0, 9, 0xFF, 0]);
        assert_eq!(exception(3, 2), vec![0x83, 2]);
    }
}
