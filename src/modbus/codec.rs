//! Turns raw Modbus registers and bits into typed, scaled values and back (byte and word order).

pub use crate::model::format::{ByteOrder, DataType, Format, Table, WordOrder};
use crate::model::Value;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("expected {expected} registers, got {got}")]
    Short { expected: usize, got: usize },
    #[error("value {0} is not a number")]
    NotNumber(String),
    #[error("value {value} is outside what this point holds ({min} … {max})")]
    OutOfRange { value: String, min: f64, max: f64 },
    #[error("value {0} is not a bool: true, false, 1 or 0")]
    NotBool(String),
    #[error("string of {len} bytes does not fit in {registers} registers")]
    StringTooLong { len: usize, registers: u16 },
    #[error("value is not a number: {0}")]
    NotFinite(f64),
    #[error("value {0} is past 2^53, where a float cannot say which integer it is: send it as an integer or a string of digits")]
    Inexact(String),
    #[error("value {value} is not a step of this point: it takes steps of {step} (nearest: {below} or {above})")]
    NotAStep {
        value: String,
        step: String,
        below: String,
        above: String,
    },
}

/// Register words in wire order to big-endian bytes, applying byte and word order.
fn regs_to_be_bytes(regs: &[u16], bo: ByteOrder, wo: WordOrder) -> Vec<u8> {
    let mut out = vec![0; regs.len() * 2];
    put_be_bytes(regs, bo, wo, &mut out);
    out
}

/// [`regs_to_be_bytes`] for a number (at most four words), on the stack: a number is decoded
/// for every point of every poll, and a heap buffer each time was ~4 % of the gateway's
/// instructions (callgrind, BENCHMARKS.md).
fn number_be_bytes(regs: &[u16], bo: ByteOrder, wo: WordOrder) -> [u8; 8] {
    let mut out = [0; 8];
    let n = regs.len().min(4);
    put_be_bytes(&regs[..n], bo, wo, &mut out[..n * 2]);
    out
}

/// Writes `regs` into `out` (two bytes a word) in big-endian order.
fn put_be_bytes(regs: &[u16], bo: ByteOrder, wo: WordOrder, out: &mut [u8]) {
    let n = regs.len();
    for (i, pair) in out.chunks_exact_mut(2).enumerate() {
        let r = match wo {
            WordOrder::Big => regs[i],
            WordOrder::Little => regs[n - 1 - i],
        };
        let [hi, lo] = r.to_be_bytes();
        pair.copy_from_slice(&match bo {
            ByteOrder::Big => [hi, lo],
            ByteOrder::Little => [lo, hi],
        });
    }
}

/// The inverse of [`regs_to_be_bytes`].
fn be_bytes_to_regs(bytes: &[u8], bo: ByteOrder, wo: WordOrder) -> Vec<u16> {
    let mut regs: Vec<u16> = bytes
        .chunks(2)
        .map(|c| match bo {
            ByteOrder::Big => u16::from_be_bytes([c[0], c[1]]),
            ByteOrder::Little => u16::from_le_bytes([c[0], c[1]]),
        })
        .collect();
    if wo == WordOrder::Little {
        regs.reverse();
    }
    regs
}

/// `raw * scale + offset`, without the noise the arithmetic adds (666 × 0.1 is 66.6).
fn apply_scale(f: &Format, raw: f64) -> f64 {
    if f.scaled() {
        crate::model::float::tidy(raw * f.scale + f.offset)
    } else {
        raw
    }
}

fn int_value(f: &Format, v: i64) -> Value {
    if f.scaled() {
        Value::Float(apply_scale(f, v as f64))
    } else {
        Value::Int(v)
    }
}

/// Decodes registers (already sliced to this point's position) into a value.
pub fn decode_registers(f: &Format, regs: &[u16]) -> Result<Value, CodecError> {
    let need = f.data_type.registers(f.length) as usize;
    if regs.len() < need {
        return Err(CodecError::Short {
            expected: need,
            got: regs.len(),
        });
    }
    let regs = &regs[..need];
    let bytes = match f.data_type {
        DataType::String => [0; 8],
        _ => number_be_bytes(regs, f.byte_order, f.word_order),
    };
    let value = match f.data_type {
        DataType::Bool => {
            let r = u16::from_be_bytes([bytes[0], bytes[1]]);
            Value::Bool(match f.bit {
                // The config allows 0..=15; a wider bit reads as off rather than panic.
                Some(b) => r.checked_shr(b.into()).is_some_and(|x| x & 1 != 0),
                None => r != 0,
            })
        }
        DataType::U16 => int_value(f, i64::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
        DataType::I16 => int_value(f, i64::from(i16::from_be_bytes([bytes[0], bytes[1]]))),
        DataType::U32 => int_value(
            f,
            i64::from(u32::from_be_bytes(bytes[..4].try_into().unwrap())),
        ),
        DataType::I32 => int_value(
            f,
            i64::from(i32::from_be_bytes(bytes[..4].try_into().unwrap())),
        ),
        DataType::U64 => {
            let v = u64::from_be_bytes(bytes[..8].try_into().unwrap());
            if f.scaled() {
                Value::Float(apply_scale(f, v as f64))
            } else {
                Value::UInt(v)
            }
        }
        DataType::I64 => int_value(f, i64::from_be_bytes(bytes[..8].try_into().unwrap())),
        DataType::F32 => {
            // As typed into the device (66.6), not as the f32 widens (66.59999847412109).
            let v =
                crate::model::float::short_f32(f32::from_be_bytes(bytes[..4].try_into().unwrap()));
            check_finite(v)?;
            Value::Float(apply_scale(f, v))
        }
        DataType::F64 => {
            let v = f64::from_be_bytes(bytes[..8].try_into().unwrap());
            check_finite(v)?;
            Value::Float(apply_scale(f, v))
        }
        DataType::String => {
            // Strings are a byte stream in register order; word order does not apply.
            let bytes = regs_to_be_bytes(regs, f.byte_order, WordOrder::Big);
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            Value::Text(
                String::from_utf8_lossy(&bytes[..end])
                    .trim_end()
                    .to_string(),
            )
        }
    };
    Ok(value)
}

fn check_finite(v: f64) -> Result<(), CodecError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(CodecError::NotFinite(v))
    }
}

/// Decodes one bit read from a coil or discrete table.
pub fn decode_bit(bit: bool) -> Value {
    Value::Bool(bit)
}

/// A value to write as the raw number the device holds: `(v - offset) / scale`. Text is
/// parsed; NaN, infinities and overflow to infinity are refused, never written as 0.
fn raw_number(f: &Format, v: &Value) -> Result<f64, CodecError> {
    let x = match v {
        Value::Int(i) => *i as f64,
        Value::UInt(u) => *u as f64,
        Value::Float(x) => *x,
        Value::Text(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| CodecError::NotNumber(s.clone()))?,
        Value::Bool(_) => return Err(CodecError::NotNumber(v.to_string())),
    };
    // Rust's parser takes "NaN" and "inf", and 1e999 overflows to infinity.
    if !x.is_finite() {
        return Err(CodecError::NotNumber(v.to_string()));
    }
    Ok((x - f.offset) / f.scale)
}

/// The raw range `lo..=hi` in engineering units, for the error a person reads.
fn out_of_range(f: &Format, v: &Value, lo: f64, hi: f64) -> CodecError {
    let (a, b) = (lo * f.scale + f.offset, hi * f.scale + f.offset);
    CodecError::OutOfRange {
        value: v.to_string(),
        min: a.min(b),
        max: a.max(b),
    }
}

/// `x` with as many decimals as the step has (0.1 → one): no float noise in a message.
fn in_steps(x: f64, step: f64) -> String {
    let decimals = (-step.abs().log10().floor()).clamp(0.0, 12.0) as usize;
    format!("{x:.decimals$}")
}

/// Integers an f64 holds exactly: past 2^53 a float names a neighbourhood, not a number.
const F64_EXACT: f64 = 9_007_199_254_740_992.0;

/// A value to write as a raw integer within `lo..=hi`, compared in the integer domain (i128
/// holds every i64 and u64): an f64 cast would make 2^63 and 2^64 equal to the type's maximum
/// and the final cast wrap them. Exact integers go through unrounded so a u64 counter keeps
/// every bit; a float past 2^53 is refused, as it cannot say which integer was meant.
fn raw_int(f: &Format, v: &Value, lo: i128, hi: i128) -> Result<i128, CodecError> {
    let x: i128 = match v {
        Value::Int(i) if !f.scaled() => i128::from(*i),
        Value::UInt(u) if !f.scaled() => i128::from(*u),
        Value::Text(s) if !f.scaled() && s.trim().parse::<i128>().is_ok() => {
            s.trim().parse::<i128>().unwrap()
        }
        _ => {
            let raw = raw_number(f, v)?;
            let whole = raw.round();
            if whole.abs() >= F64_EXACT {
                // Within the type's range it would be a guess; outside it, say so.
                if whole < lo as f64 || whole > hi as f64 {
                    return Err(out_of_range(f, v, lo as f64, hi as f64));
                }
                return Err(CodecError::Inexact(v.to_string()));
            }
            // A value on a step comes out within float rounding of an integer (80.1 / 0.1 =
            // 800.9999999999999); anything further off would be silently rounded on the wire.
            if (raw - whole).abs() > 1e-6 * whole.abs().max(1.0) {
                let (a, b) = (
                    raw.floor() * f.scale + f.offset,
                    raw.ceil() * f.scale + f.offset,
                );
                return Err(CodecError::NotAStep {
                    value: v.to_string(),
                    step: in_steps(f.scale.abs(), f.scale),
                    below: in_steps(a.min(b), f.scale),
                    above: in_steps(a.max(b), f.scale),
                });
            }
            // |whole| < 2^53: the conversion is exact.
            whole as i128
        }
    };
    if x < lo || x > hi {
        return Err(out_of_range(f, v, lo as f64, hi as f64));
    }
    Ok(x)
}

/// A string, NUL-padded to the point's registers, two characters to a register.
fn encode_string(f: &Format, v: &Value) -> Result<Vec<u16>, CodecError> {
    let s = v.to_string();
    let cap = f.length as usize * 2;
    if s.len() > cap {
        return Err(CodecError::StringTooLong {
            len: s.len(),
            registers: f.length,
        });
    }
    let mut b = s.into_bytes();
    b.resize(cap, 0);
    Ok(be_bytes_to_regs(&b, f.byte_order, WordOrder::Big))
}

/// Parses a user-given value (CLI or write request) strictly for the point's type and encodes
/// it into registers, undoing scale and offset. A value the point cannot hold exactly as a
/// number (`"NaN"`, `inf`, `1e99` to a u16, a bool to a number) is an error, never a guess:
/// what is written reaches a real machine.
pub fn encode_registers(f: &Format, v: &Value) -> Result<Vec<u16>, CodecError> {
    // Each range in the type's own integers (i128 holds them all): the cast after it is exact.
    let int = |v: &Value, lo: i128, hi: i128| raw_int(f, v, lo, hi);
    let num = |v: &Value| raw_number(f, v);
    let bytes: Vec<u8> = match f.data_type {
        DataType::Bool => u16::from(write_bool(v)?).to_be_bytes().to_vec(),
        DataType::U16 => (int(v, 0, u16::MAX.into())? as u16).to_be_bytes().to_vec(),
        DataType::I16 => (int(v, i16::MIN.into(), i16::MAX.into())? as i16)
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => (int(v, 0, u32::MAX.into())? as u32).to_be_bytes().to_vec(),
        DataType::I32 => (int(v, i32::MIN.into(), i32::MAX.into())? as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => (int(v, 0, u64::MAX.into())? as u64).to_be_bytes().to_vec(),
        DataType::I64 => (int(v, i64::MIN.into(), i64::MAX.into())? as i64)
            .to_be_bytes()
            .to_vec(),
        DataType::F32 => {
            let x = num(v)?;
            // Finite as an f64 but past f32::MAX would become infinity on the wire.
            if x.abs() > f64::from(f32::MAX) {
                return Err(out_of_range(f, v, f64::from(f32::MIN), f64::from(f32::MAX)));
            }
            (x as f32).to_be_bytes().to_vec()
        }
        DataType::F64 => {
            let x = num(v)?;
            // Finite in, but (x - offset) / scale may still overflow.
            check_finite(x)?;
            x.to_be_bytes().to_vec()
        }
        DataType::String => return encode_string(f, v),
    };
    Ok(be_bytes_to_regs(&bytes, f.byte_order, f.word_order))
}

/// What a write to a numeric point can hold, in engineering units: `(min, max, step)`, the step
/// being the scale for integer types (`None` for floats, strings and bools) — what the
/// dashboard checks a value against before it asks for a confirmation.
pub fn write_range(f: &Format) -> Option<(f64, f64, Option<f64>)> {
    let (lo, hi, integer) = match f.data_type {
        DataType::U16 => (0.0, f64::from(u16::MAX), true),
        DataType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX), true),
        DataType::U32 => (0.0, f64::from(u32::MAX), true),
        DataType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX), true),
        DataType::U64 => (0.0, u64::MAX as f64, true),
        DataType::I64 => (i64::MIN as f64, i64::MAX as f64, true),
        DataType::F32 => (f64::from(f32::MIN), f64::from(f32::MAX), false),
        DataType::F64 => (f64::MIN, f64::MAX, false),
        DataType::Bool | DataType::String => return None,
    };
    let (a, b) = (lo * f.scale + f.offset, hi * f.scale + f.offset);
    Some((a.min(b), a.max(b), integer.then_some(f.scale.abs())))
}

/// Parses a bool as SPEC allows one to be written: `true`, `false`, `1`, `0`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// A bool a client writes (WebSocket, MQTT): `true`/`false` or `1`/`0`, as JSON or as text;
/// anything else (`"maybe"`, `"yes"`, `2`) is an error rather than "off".
pub fn write_bool(v: &Value) -> Result<bool, CodecError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Int(0) | Value::UInt(0) => Ok(false),
        Value::Int(1) | Value::UInt(1) => Ok(true),
        Value::Float(x) if *x == 0.0 || *x == 1.0 => Ok(*x == 1.0),
        Value::Text(s) => parse_bool(s).ok_or_else(|| CodecError::NotBool(s.clone())),
        other => Err(CodecError::NotBool(other.to_string())),
    }
}

#[cfg(test)]
mod tests;
