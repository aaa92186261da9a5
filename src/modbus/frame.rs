//! Server-side Modbus framing: the PDU handler over a register map, MBAP (TCP) and RTU frames.
//!
//! The simulator and the scripted fault device need the server end with byte-level control (wrong transaction ids, bad CRCs, half frames), so the
//! server side is this small module.

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

pub const EX_ILLEGAL_FUNCTION: u8 = 0x01;
pub const EX_ILLEGAL_ADDRESS: u8 = 0x02;
pub const EX_ILLEGAL_VALUE: u8 = 0x03;

fn exception(fc: u8, code: u8) -> Vec<u8> {
    vec![fc | 0x80, code]
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Answers one request PDU against `mem`. Always returns a response PDU (possibly an exception).
pub fn handle_pdu(mem: &mut Memory, pdu: &[u8]) -> Vec<u8> {
    let Some(&fc) = pdu.first() else {
        return exception(0, EX_ILLEGAL_FUNCTION);
    };
    let body = &pdu[1..];
    let range = |len: usize, max: u16| -> Result<(usize, usize), u8> {
        if body.len() < 4 {
            return Err(EX_ILLEGAL_VALUE);
        }
        let (addr, count) = (be16(body) as usize, be16(&body[2..]));
        if count == 0 || count > max {
            return Err(EX_ILLEGAL_VALUE);
        }
        if addr + count as usize > len {
            return Err(EX_ILLEGAL_ADDRESS);
        }
        Ok((addr, count as usize))
    };
    let result: Result<Vec<u8>, u8> = match fc {
        0x01 | 0x02 => {
            let bits = if fc == 1 { &mem.coils } else { &mem.discrete };
            range(bits.len(), 2000).map(|(a, n)| {
                let packed = pack_bits(&bits[a..a + n]);
                let mut r = vec![fc, packed.len() as u8];
                r.extend(packed);
                r
            })
        }
        0x03 | 0x04 => {
            let regs = if fc == 3 { &mem.holding } else { &mem.input };
            range(regs.len(), 125).map(|(a, n)| {
                let mut r = vec![fc, (n * 2) as u8];
                for v in &regs[a..a + n] {
                    r.extend_from_slice(&v.to_be_bytes());
                }
                r
            })
        }
        0x05 => {
            if body.len() < 4 {
                Err(EX_ILLEGAL_VALUE)
            } else {
                let (a, v) = (be16(body) as usize, be16(&body[2..]));
                if v != 0xFF00 && v != 0 {
                    Err(EX_ILLEGAL_VALUE)
                } else if a >= mem.coils.len() {
                    Err(EX_ILLEGAL_ADDRESS)
                } else {
                    mem.coils[a] = v == 0xFF00;
                    Ok(pdu[..5].to_vec())
                }
            }
        }
        0x06 => {
            if body.len() < 4 {
                Err(EX_ILLEGAL_VALUE)
            } else if be16(body) as usize >= mem.holding.len() {
                Err(EX_ILLEGAL_ADDRESS)
            } else {
                mem.holding[be16(body) as usize] = be16(&body[2..]);
                Ok(pdu[..5].to_vec())
            }
        }
        0x0F => range(mem.coils.len(), 1968).and_then(|(a, n)| {
            let data = body.get(5..5 + n.div_ceil(8)).ok_or(EX_ILLEGAL_VALUE)?;
            for i in 0..n {
                mem.coils[a + i] = data[i / 8] & (1 << (i % 8)) != 0;
            }
            Ok(pdu[..5].to_vec())
        }),
        0x10 => range(mem.holding.len(), 123).and_then(|(a, n)| {
            let data = body.get(5..5 + n * 2).ok_or(EX_ILLEGAL_VALUE)?;
            for i in 0..n {
                mem.holding[a + i] = be16(&data[i * 2..]);
            }
            Ok(pdu[..5].to_vec())
        }),
        _ => Err(EX_ILLEGAL_FUNCTION),
    };
    result.unwrap_or_else(|code| exception(fc, code))
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
