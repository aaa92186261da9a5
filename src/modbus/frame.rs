//! Server-side Modbus framing for the simulator: the PDU handler over a register map, MBAP (TCP)
//! and RTU frames.
//!
//! The simulator and the scripted fault device need the server end with byte-level control (wrong transaction ids, bad CRCs, half frames), so the
//! server side is this small module.

use super::request::{self, Request};
use crate::model::format::Table;

/// The register map of one simulated unit.
#[derive(Debug, Clone)]
pub struct Memory {
    pub coils: Vec<bool>,
    pub discrete: Vec<bool>,
    pub input: Vec<u16>,
    pub holding: Vec<u16>,
}

impl Memory {
    pub fn new(size: usize) -> Memory {
        Memory {
            coils: vec![false; size],
            discrete: vec![false; size],
            input: vec![0; size],
            holding: vec![0; size],
        }
    }

    /// Writes registers starting at `addr`, clipped to the map.
    pub fn set_regs(regs: &mut [u16], addr: usize, values: &[u16]) {
        for (i, v) in values.iter().enumerate() {
            if let Some(r) = regs.get_mut(addr + i) {
                *r = *v;
            }
        }
    }
}

/// Answers one request PDU against `mem`. Always returns a response PDU (possibly an exception).
pub fn handle_pdu(mem: &mut Memory, pdu: &[u8]) -> Vec<u8> {
    let fc = pdu.first().copied().unwrap_or(0);
    answer(mem, pdu).unwrap_or_else(|code| request::exception(fc, code))
}

fn answer(mem: &mut Memory, pdu: &[u8]) -> Result<Vec<u8>, u8> {
    let req = request::parse(pdu)?;
    let fc = req.function();
    // Past the simulated map: exception 02, as a real device answers.
    let within = |len: usize, start: u16, count: usize| {
        if usize::from(start) + count <= len {
            Ok(usize::from(start))
        } else {
            Err(request::ILLEGAL_ADDRESS)
        }
    };
    match &req {
        Request::Read {
            table,
            start,
            count,
        } => {
            let n = usize::from(*count);
            match table {
                Table::Coil | Table::Discrete => {
                    let bits = if *table == Table::Coil {
                        &mem.coils
                    } else {
                        &mem.discrete
                    };
                    let a = within(bits.len(), *start, n)?;
                    return Ok(request::bits_reply(fc, &bits[a..a + n]));
                }
                Table::Holding | Table::Input => {
                    let regs = if *table == Table::Holding {
                        &mem.holding
                    } else {
                        &mem.input
                    };
                    let a = within(regs.len(), *start, n)?;
                    return Ok(request::registers_reply(fc, &regs[a..a + n]));
                }
            }
        }
        Request::WriteCoil { addr, value } => {
            let a = within(mem.coils.len(), *addr, 1)?;
            mem.coils[a] = *value;
        }
        Request::WriteRegister { addr, value } => {
            let a = within(mem.holding.len(), *addr, 1)?;
            mem.holding[a] = *value;
        }
        Request::WriteCoils { start, values } => {
            let a = within(mem.coils.len(), *start, values.len())?;
            mem.coils[a..a + values.len()].copy_from_slice(values);
        }
        Request::WriteRegisters { start, values } => {
            let a = within(mem.holding.len(), *start, values.len())?;
            mem.holding[a..a + values.len()].copy_from_slice(values);
        }
    }
    Ok(request::write_reply(&req))
}

/// Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Appends the CRC to an RTU frame.
pub fn rtu_frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(pdu.len() + 3);
    f.push(unit);
    f.extend_from_slice(pdu);
    let crc = crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// The length of the RTU request frame at the start of `buf`, when it can be told yet.
/// Requests, unlike responses, carry their length in a fixed place for every function the
/// simulator serves; anything else is garbage to skip.
pub fn rtu_request_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let fc = *buf.get(1)?;
    match fc {
        0x01..=0x06 => Some(Ok(8)),
        0x0F | 0x10 => buf.get(6).map(|&n| Ok(9 + n as usize)),
        _ => Some(Err(())),
    }
}

/// MBAP header + PDU for a TCP response.
pub fn mbap_frame(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(7 + pdu.len());
    f.extend_from_slice(&tid.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    f.push(unit);
    f.extend_from_slice(pdu);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_reference_vector() {
        // Read holding registers, unit 1, address 0, count 10: CRC C5 CD.
        assert_eq!(rtu_frame(1, &[3, 0, 0, 0, 10])[6..], [0xC5, 0xCD]);
    }

    #[test]
    fn reads_writes_and_exceptions() {
        let mut m = Memory::new(16);
        assert_eq!(
            handle_pdu(&mut m, &[6, 0, 3, 0x12, 0x34]),
            vec![6, 0, 3, 0x12, 0x34]
        );
        assert_eq!(handle_pdu(&mut m, &[3, 0, 3, 0, 1]), vec![3, 2, 0x12, 0x34]);
        assert_eq!(handle_pdu(&mut m, &[3, 0, 15, 0, 2]), vec![0x83, 2]);
        assert_eq!(handle_pdu(&mut m, &[3, 0, 0, 0, 0]), vec![0x83, 3]);
        assert_eq!(handle_pdu(&mut m, &[0x2B, 0]), vec![0xAB, 1]);
        assert_eq!(
            handle_pdu(&mut m, &[5, 0, 9, 0xFF, 0]),
            vec![5, 0, 9, 0xFF, 0]
        );
        assert_eq!(handle_pdu(&mut m, &[1, 0, 8, 0, 2]), vec![1, 1, 0b10]);
        assert_eq!(
            handle_pdu(&mut m, &[0x0F, 0, 0, 0, 3, 1, 0b101]),
            vec![0x0F, 0, 0, 0, 3]
        );
        assert!(m.coils[0] && !m.coils[1] && m.coils[2]);
        assert_eq!(
            handle_pdu(&mut m, &[0x10, 0, 1, 0, 2, 4, 0, 7, 0, 8]),
            vec![0x10, 0, 1, 0, 2]
        );
        assert_eq!(m.holding[1..3], [7, 8]);
        assert_eq!(handle_pdu(&mut m, &[]), vec![0x80, 1]);
    }
}
