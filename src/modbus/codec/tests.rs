//! Unit tests of `modbus/codec.rs`.

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
    assert_eq!(
        encode_registers(&setpoint, &Value::Float(80.1)).unwrap(),
        vec![801]
    );
    // Between two steps: refused, saying the step and the nearest value (never rounded).
    let e = encode_registers(&setpoint, &Value::Text("80.05".into())).unwrap_err();
    assert_eq!(
        e.to_string(),
        "value 80.05 is not a step of this point: it takes steps of 0.1 (nearest: 80.0 or 80.1)"
    );
    let plain = Format::raw(Table::Holding, DataType::U16);
    let e = encode_registers(&plain, &Value::Float(80.5)).unwrap_err();
    assert!(matches!(e, CodecError::NotAStep { .. }), "{e}");
    assert_eq!(
        encode_registers(&plain, &Value::Float(81.0)).unwrap(),
        vec![81]
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

/// The hostile test's 64-bit values: each wrapped on every write path while answering ok,
/// because the range was compared in f64 (where 2^63 and 2^64 equal the type's maximum).
#[test]
fn sixty_four_bit_writes_fit_exactly_or_are_refused() {
    let u = Format::raw(Table::Holding, DataType::U64);
    let i = Format::raw(Table::Holding, DataType::I64);
    let refused = |f: &Format, v: Value| {
        let e = encode_registers(f, &v);
        assert!(e.is_err(), "{v:?} to {:?} gave {e:?}", f.data_type);
    };
    refused(&u, Value::Text("18446744073709551616".into()));
    refused(&u, Value::Text("18446744073709552000".into()));
    refused(&u, Value::Float(18_446_744_073_709_551_616.0));
    refused(&u, Value::Int(-1));
    refused(&i, Value::UInt(1 << 63));
    refused(&i, Value::Text("9223372036854775808".into()));
    refused(&i, Value::Text("-9223372036854775809".into()));
    // What JSON gives for -2^63-1 and 2^63: a float that cannot say which integer it was.
    refused(&i, Value::Float(-9_223_372_036_854_775_809.0));
    refused(&i, Value::Float(9_223_372_036_854_775_808.0));
    // Within 2^53 a float is exact, so it is taken; the extremes as integers or text are too.
    assert_eq!(
        encode_registers(&u, &Value::Text("18446744073709551615".into())).unwrap(),
        vec![0xFFFF; 4]
    );
    assert_eq!(
        encode_registers(&u, &Value::UInt(u64::MAX)).unwrap(),
        vec![0xFFFF; 4]
    );
    assert_eq!(
        encode_registers(&i, &Value::Int(i64::MIN)).unwrap(),
        vec![0x8000, 0, 0, 0]
    );
    assert_eq!(
        encode_registers(&i, &Value::Text("-9223372036854775808".into())).unwrap(),
        vec![0x8000, 0, 0, 0]
    );
    assert_eq!(
        encode_registers(&u, &Value::Float(9_007_199_254_740_991.0)).unwrap(),
        vec![0x001F, 0xFFFF, 0xFFFF, 0xFFFF]
    );
    let e = encode_registers(&u, &Value::Float(9_007_199_254_740_994.0)).unwrap_err();
    assert!(matches!(e, CodecError::Inexact(_)), "{e}");
    // Narrow types: the same check in their own domain.
    let u32f = Format::raw(Table::Holding, DataType::U32);
    refused(&u32f, Value::UInt(1 << 32));
    refused(&u32f, Value::Text("4294967296".into()));
    let i16f = Format::raw(Table::Holding, DataType::I16);
    refused(&i16f, Value::Int(32768));
    refused(&i16f, Value::Int(-32769));
}
