//! Turns raw Modbus registers and bits into typed, scaled values and back (byte and word order).

use std::fmt;

use serde::Deserialize;

use crate::model::Value;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl Table {
    /// Coils and discrete inputs are read as bits, the others as 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    pub fn parse(s: &str) -> Option<Table> {
        match s {
            "coil" => Some(Table::Coil),
            "discrete" => Some(Table::Discrete),
            "input" => Some(Table::Input),
            "holding" => Some(Table::Holding),
            _ => None,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Input => "input",
            Table::Holding => "holding",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl DataType {
    pub fn parse(s: &str) -> Option<DataType> {
        Some(match s {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "string" => DataType::String,
            _ => return None,
        })
    }

    /// Registers a value of this type occupies; `length` only matters for strings.
    pub fn registers(self, length: u16) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => length,
        }
    }
}

/// Order of the two bytes inside one 16-bit register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    #[default]
    Big,
    Little,
}

/// Order of the registers inside a 32- or 64-bit value: `Big` means the first register holds
/// the most significant word (the Modbus convention most devices follow, "ABCD").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    #[default]
    Big,
    Little,
}

impl ByteOrder {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "big" => Some(Self::Big),
            "little" => Some(Self::Little),
            _ => None,
        }
    }
}

impl WordOrder {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "big" => Some(Self::Big),
            "little" => Some(Self::Little),
            _ => None,
        }
    }
}

/// Everything needed to decode one point from a block of registers or bits.
#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    pub table: Table,
    pub data_type: DataType,
    /// Registers for `string`.
    pub length: u16,
    /// One bit of a 16-bit register, for `bool` on a register table.
    pub bit: Option<u8>,
    pub byte_order: ByteOrder,
    pub word_order: WordOrder,
    pub scale: f64,
    pub offset: f64,
}

impl Format {
    /// A plain format with no scaling: what the commissioning CLI reads with.
    pub fn raw(table: Table, data_type: DataType) -> Format {
        Format {
            table,
            data_type,
            length: 0,
            bit: None,
            byte_order: ByteOrder::Big,
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
        }
    }

    /// Registers (or bits, on bit tables) this point occupies.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type.registers(self.length)
        }
    }

    fn scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }
}

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
}

/// Register words in wire order to big-endian bytes, applying byte and word order.
fn regs_to_be_bytes(regs: &[u16], bo: ByteOrder, wo: WordOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(regs.len() * 2);
    let mut push = |r: u16| {
        let [hi, lo] = r.to_be_bytes();
        match bo {
            ByteOrder::Big => out.extend_from_slice(&[hi, lo]),
            ByteOrder::Little => out.extend_from_slice(&[lo, hi]),
        }
    };
    match wo {
        WordOrder::Big => regs.iter().copied().for_each(&mut push),
        WordOrder::Little => regs.iter().rev().copied().for_each(&mut push),
    }
    out
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

fn apply_scale(f: &Format, raw: f64) -> f64 {
    raw * f.scale + f.offset
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
    let bytes = regs_to_be_bytes(regs, f.byte_order, f.word_order);
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
            let v = f64::from(f32::from_be_bytes(bytes[..4].try_into().unwrap()));
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

/// Parses a user-given value (CLI or write request) strictly for the point's type and encodes
/// it into registers, undoing scale and offset. A value the point cannot hold exactly as a
/// number (`"NaN"`, `inf`, `1e99` to a u16, a bool to a number) is an error, never a guess:
/// what is written reaches a real machine.
pub fn encode_registers(f: &Format, v: &Value) -> Result<Vec<u16>, CodecError> {
    let num = |v: &Value| -> Result<f64, CodecError> {
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
    };
    // The raw range in engineering units, for the error a person reads.
    let out_of_range = |v: &Value, lo: f64, hi: f64| {
        let (a, b) = (lo * f.scale + f.offset, hi * f.scale + f.offset);
        CodecError::OutOfRange {
            value: v.to_string(),
            min: a.min(b),
            max: a.max(b),
        }
    };
    let int = |v: &Value, lo: f64, hi: f64| -> Result<i128, CodecError> {
        // Exact integers go through unrounded so a u64 counter keeps every bit.
        let x: i128 = match v {
            Value::Int(i) if !f.scaled() => i128::from(*i),
            Value::UInt(u) if !f.scaled() => i128::from(*u),
            Value::Text(s) if !f.scaled() && s.trim().parse::<i128>().is_ok() => {
                s.trim().parse::<i128>().unwrap()
            }
            _ => num(v)?.round() as i128,
        };
        if (x as f64) < lo || (x as f64) > hi {
            return Err(out_of_range(v, lo, hi));
        }
        Ok(x)
    };
    let bytes: Vec<u8> = match f.data_type {
        DataType::Bool => u16::from(write_bool(v)?).to_be_bytes().to_vec(),
        DataType::U16 => (int(v, 0.0, f64::from(u16::MAX))? as u16)
            .to_be_bytes()
            .to_vec(),
        DataType::I16 => (int(v, f64::from(i16::MIN), f64::from(i16::MAX))? as i16)
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => (int(v, 0.0, f64::from(u32::MAX))? as u32)
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => (int(v, f64::from(i32::MIN), f64::from(i32::MAX))? as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => (int(v, 0.0, u64::MAX as f64)? as u64)
            .to_be_bytes()
            .to_vec(),
        DataType::I64 => (int(v, i64::MIN as f64, i64::MAX as f64)? as i64)
            .to_be_bytes()
            .to_vec(),
        DataType::F32 => {
            let x = num(v)?;
            // Finite as an f64 but past f32::MAX would become infinity on the wire.
            if x.abs() > f64::from(f32::MAX) {
                return Err(out_of_range(v, f64::from(f32::MIN), f64::from(f32::MAX)));
            }
            (x as f32).to_be_bytes().to_vec()
        }
        DataType::F64 => {
            let x = num(v)?;
            // Finite in, but (x - offset) / scale may still overflow.
            check_finite(x)?;
            x.to_be_bytes().to_vec()
        }
        DataType::String => {
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
            return Ok(be_bytes_to_regs(&b, f.byte_order, WordOrder::Big));
        }
    };
    Ok(be_bytes_to_regs(&bytes, f.byte_order, f.word_order))
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
mod tests {
    use super::*;

    fn fmt(t: DataType, bo: ByteOrder, wo: WordOrder) -> Format {
        Format {
            byte_order: bo,
            word_order: wo,
            ..Format::raw(Table::Holding, t)
        }
    }

    const ORDERS: [(ByteOrder, WordOrder, &str); 4] = [
        (ByteOrder::Big, WordOrder::Big, "ABCD"),
        (ByteOrder::Little, WordOrder::Little, "DCBA"),
        (ByteOrder::Little, WordOrder::Big, "BADC"),
        (ByteOrder::Big, WordOrder::Little, "CDAB"),
    ];

    #[test]
    fn f32_in_all_four_orders_decodes_the_same_value() {
        // 123.456 as IEEE 754 is 0x42F6E979: A=42 B=F6 C=E9 D=79.
        let regs = |o: &str| -> Vec<u16> {
            match o {
                "ABCD" => vec![0x42F6, 0xE979],
                "DCBA" => vec![0x79E9, 0xF642],
                "BADC" => vec![0xF642, 0x79E9],
                "CDAB" => vec![0xE979, 0x42F6],
                _ => unreachable!(),
            }
        };
        for (bo, wo, name) in ORDERS {
            let f = fmt(DataType::F32, bo, wo);
            let v = decode_registers(&f, &regs(name)).unwrap();
            let Value::Float(x) = v else { panic!() };
            assert!((x - 123.456).abs() < 1e-4, "{name}: {x}");
            assert_eq!(
                encode_registers(&f, &Value::Float(123.456)).unwrap(),
                regs(name),
                "{name}"
            );
        }
    }

    #[test]
    fn u32_and_i32_in_all_four_orders() {
        // 0x12345678
        let table = [
            ("ABCD", vec![0x1234, 0x5678]),
            ("DCBA", vec![0x7856, 0x3412]),
            ("BADC", vec![0x3412, 0x7856]),
            ("CDAB", vec![0x5678, 0x1234]),
        ];
        for ((bo, wo, name), (n2, regs)) in ORDERS.into_iter().zip(table) {
            assert_eq!(name, n2);
            let f = fmt(DataType::U32, bo, wo);
            assert_eq!(
                decode_registers(&f, &regs).unwrap(),
                Value::Int(0x12345678),
                "{name}"
            );
            assert_eq!(encode_registers(&f, &Value::Int(0x12345678)).unwrap(), regs);
        }
        let f = fmt(DataType::I32, ByteOrder::Big, WordOrder::Little);
        assert_eq!(
            decode_registers(&f, &[0xFFFE, 0xFFFF]).unwrap(),
            Value::Int(-2)
        );
    }

    #[test]
    fn sixty_four_bit_values_in_all_four_orders() {
        // 0x0102030405060708 as u64; -1.5 as f64 = 0xBFF8000000000000.
        let u_regs = [
            vec![0x0102, 0x0304, 0x0506, 0x0708],
            vec![0x0807, 0x0605, 0x0403, 0x0201],
            vec![0x0201, 0x0403, 0x0605, 0x0807],
            vec![0x0708, 0x0506, 0x0304, 0x0102],
        ];
        let f_regs = [
            vec![0xBFF8, 0, 0, 0],
            vec![0, 0, 0, 0xF8BF],
            vec![0xF8BF, 0, 0, 0],
            vec![0, 0, 0, 0xBFF8],
        ];
        for (i, (bo, wo, name)) in ORDERS.into_iter().enumerate() {
            let fu = fmt(DataType::U64, bo, wo);
            assert_eq!(
                decode_registers(&fu, &u_regs[i]).unwrap(),
                Value::UInt(0x0102030405060708),
                "{name}"
            );
            assert_eq!(
                encode_registers(&fu, &Value::UInt(0x0102030405060708)).unwrap(),
                u_regs[i]
            );
            let fi = fmt(DataType::I64, bo, wo);
            assert_eq!(
                decode_registers(&fi, &u_regs[i]).unwrap(),
                Value::Int(0x0102030405060708)
            );
            let ff = fmt(DataType::F64, bo, wo);
            assert_eq!(
                decode_registers(&ff, &f_regs[i]).unwrap(),
                Value::Float(-1.5),
                "{name}"
            );
            assert_eq!(
                encode_registers(&ff, &Value::Float(-1.5)).unwrap(),
                f_regs[i]
            );
        }
    }

    #[test]
    fn u64_keeps_every_bit_without_scale() {
        let f = fmt(DataType::U64, ByteOrder::Big, WordOrder::Big);
        let v = Value::UInt(u64::MAX - 1);
        let regs = encode_registers(&f, &v).unwrap();
        assert_eq!(decode_registers(&f, &regs).unwrap(), v);
    }

    #[test]
    fn scale_and_offset_apply_both_ways() {
        let f = Format {
            scale: 0.1,
            offset: -40.0,
            ..Format::raw(Table::Holding, DataType::I16)
        };
        let Value::Float(x) = decode_registers(&f, &[650]).unwrap() else {
            panic!()
        };
        assert!((x - 25.0).abs() < 1e-9);
        assert_eq!(
            encode_registers(&f, &Value::Float(25.0)).unwrap(),
            vec![650]
        );
    }

    #[test]
    fn bit_of_a_register_and_signed_types() {
        let f = Format {
            bit: Some(3),
            ..Format::raw(Table::Holding, DataType::Bool)
        };
        assert_eq!(decode_registers(&f, &[0b1000]).unwrap(), Value::Bool(true));
        assert_eq!(decode_registers(&f, &[0b0111]).unwrap(), Value::Bool(false));
        let f = Format::raw(Table::Holding, DataType::I16);
        assert_eq!(decode_registers(&f, &[0xFFFF]).unwrap(), Value::Int(-1));
        let f = fmt(DataType::U16, ByteOrder::Little, WordOrder::Big);
        assert_eq!(decode_registers(&f, &[0x3412]).unwrap(), Value::Int(0x1234));
    }

    #[test]
    fn strings_trim_padding_and_honour_byte_order() {
        let f = Format {
            length: 3,
            ..Format::raw(Table::Holding, DataType::String)
        };
        assert_eq!(
            decode_registers(&f, &[0x4142, 0x4300, 0x0000]).unwrap(),
            Value::Text("ABC".into())
        );
        let fl = Format {
            byte_order: ByteOrder::Little,
            ..f.clone()
        };
        assert_eq!(
            decode_registers(&fl, &[0x4241, 0x0043, 0]).unwrap(),
            Value::Text("ABC".into())
        );
        assert_eq!(
            encode_registers(&f, &Value::Text("ABC".into())).unwrap(),
            vec![0x4142, 0x4300, 0]
        );
        assert!(matches!(
            encode_registers(&f, &Value::Text("TOO LONG".into())),
            Err(CodecError::StringTooLong { .. })
        ));
    }

    #[test]
    fn nan_and_infinity_are_decode_errors() {
        let f = Format::raw(Table::Holding, DataType::F32);
        assert!(matches!(
            decode_registers(&f, &[0x7FC0, 0]),
            Err(CodecError::NotFinite(_))
        ));
        assert!(matches!(
            decode_registers(&f, &[0x7F80, 0]),
            Err(CodecError::NotFinite(_))
        ));
        assert!(matches!(
            decode_registers(&f, &[0x42F6]),
            Err(CodecError::Short {
                expected: 2,
                got: 1
            })
        ));
    }

    #[test]
    fn out_of_range_writes_are_refused() {
        let f = Format::raw(Table::Holding, DataType::U16);
        assert!(encode_registers(&f, &Value::Int(70000)).is_err());
        assert!(encode_registers(&f, &Value::Int(-1)).is_err());
        assert!(encode_registers(&f, &Value::Text("abc".into())).is_err());
        assert_eq!(
            encode_registers(&f, &Value::Text("42".into())).unwrap(),
            vec![42]
        );
    }

    /// What reaches a device is exactly what was asked or nothing: a setpoint given "NaN" must
    /// not become 0, a coil given "maybe" must not switch off.
    #[test]
    fn a_write_value_is_parsed_strictly_for_the_point_type() {
        let mut setpoint = Format::raw(Table::Holding, DataType::U16);
        setpoint.scale = 0.1;
        for bad in [
            "NaN",
            "nan",
            "inf",
            "-infinity",
            "1e999",
            "",
            "0x10",
            "80 °C",
        ] {
            let e = encode_registers(&setpoint, &Value::Text(bad.into()));
            assert!(matches!(e, Err(CodecError::NotNumber(_))), "{bad}: {e:?}");
        }
        for bad in [
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Bool(true),
        ] {
            assert!(encode_registers(&setpoint, &bad).is_err(), "{bad}");
        }
        assert!(encode_registers(&setpoint, &Value::Float(1e99)).is_err());
        // The range in engineering units, not the raw register's.
        let e = encode_registers(&setpoint, &Value::Int(7000)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value 7000 is outside what this point holds (0 … 6553.5)"
        );
        assert!(encode_registers(&setpoint, &Value::Int(-5)).is_err());
        assert_eq!(
            encode_registers(&setpoint, &Value::Text("80.5".into())).unwrap(),
            vec![805]
        );
        let f32f = Format::raw(Table::Holding, DataType::F32);
        assert!(encode_registers(&f32f, &Value::Float(1e39)).is_err());
        let flag = Format::raw(Table::Holding, DataType::Bool);
        for bad in ["maybe", "yes", "on", "2", "TRUE "] {
            assert!(write_bool(&Value::Text(bad.into())).is_err(), "{bad}");
            assert!(
                encode_registers(&flag, &Value::Text(bad.into())).is_err(),
                "{bad}"
            );
        }
        for bad in [Value::Int(2), Value::Int(-1), Value::Float(0.5)] {
            assert!(write_bool(&bad).is_err(), "{bad}");
        }
        for (good, b) in [
            (Value::Text("true".into()), true),
            (Value::Text(" 0".into()), false),
            (Value::Int(1), true),
            (Value::Bool(false), false),
        ] {
            assert_eq!(write_bool(&good).unwrap(), b, "{good}");
        }
    }
}
