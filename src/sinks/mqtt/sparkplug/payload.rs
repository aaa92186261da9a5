//! The Sparkplug B payload on the wire: protobuf messages written from the specification's
//! message layout and field numbers (prost derive, no `protoc`), and how a point's type and
//! value become a metric: its datatype, value and properties.

use crate::config::Point;
use crate::model::format::DataType as PointType;
use crate::model::{Millis, Quality, Value};
use crate::state::PointLive;

/// A Sparkplug B payload (`Payload` in the specification).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// When the message was made, ms since the epoch (UTC).
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0…255, on every message but NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// One metric (`Payload.Metric`). Metadata (8), datasets (17), templates (18) and extensions
/// are neither sent nor read: prost skips unknown fields of a command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// When the value was sampled, ms since the epoch.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// The value of a metric: which field carries it follows from the datatype.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8/16/32 (two's complement in the type's width) and UInt8/16/32.
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64 (two's complement), UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// A metric's properties: keys and values side by side (`Payload.PropertySet`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyValueKind", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueKind {
    #[prost(uint32, tag = "3")]
    Int(u32),
    #[prost(uint64, tag = "4")]
    Long(u64),
    #[prost(float, tag = "5")]
    Float(f32),
    #[prost(double, tag = "6")]
    Double(f64),
    #[prost(bool, tag = "7")]
    Boolean(bool),
    #[prost(string, tag = "8")]
    String(String),
}

/// The Sparkplug datatypes we send (the specification's numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DataType {
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
}

impl DataType {
    /// A point's metric type: its register type, or Double once scale or offset make the
    /// engineering value a fraction of the raw one.
    pub fn of(t: PointType, scaled: bool) -> DataType {
        match t {
            PointType::Bool => DataType::Boolean,
            PointType::String => DataType::String,
            _ if scaled => DataType::Double,
            PointType::U16 => DataType::UInt16,
            PointType::I16 => DataType::Int16,
            PointType::U32 => DataType::UInt32,
            PointType::I32 => DataType::Int32,
            PointType::U64 => DataType::UInt64,
            PointType::I64 => DataType::Int64,
            PointType::F32 => DataType::Float,
            PointType::F64 => DataType::Double,
        }
    }

    /// A value in this type's field; `None` when it has no representation (a text in a
    /// number's metric), sent as null.
    pub fn encode(self, v: &Value) -> Option<MetricValue> {
        let int = || match v {
            Value::Int(i) => Some(i128::from(*i)),
            Value::UInt(u) => Some(i128::from(*u)),
            Value::Bool(b) => Some(i128::from(*b)),
            Value::Float(f) if f.is_finite() => Some(f.round() as i128),
            _ => None,
        };
        // Signed values in the width of their type, as Tahu and pysparkplug read them.
        Some(match self {
            DataType::Int16 => MetricValue::Int(u32::from(int()? as i16 as u16)),
            DataType::Int32 => MetricValue::Int(int()? as i32 as u32),
            DataType::UInt16 | DataType::UInt32 => MetricValue::Int(int()? as u32),
            DataType::Int64 => MetricValue::Long(int()? as i64 as u64),
            DataType::UInt64 => MetricValue::Long(int()? as u64),
            DataType::Float => MetricValue::Float(v.as_f64()? as f32),
            DataType::Double => MetricValue::Double(v.as_f64()?),
            DataType::Boolean => MetricValue::Boolean(v.as_f64()? != 0.0),
            DataType::String => MetricValue::String(match v {
                Value::Text(s) => s.clone(),
                other => other.to_json().to_string(),
            }),
        })
    }
}

/// A command's value as one of ours: the field's content read strictly by the metric's
/// datatype (or, without one, by the field itself). A value its datatype cannot hold (Int8
/// 300, Int16 70,000, UInt8 256) or a field the datatype does not use is refused with why,
/// never truncated to the type's width. The point's own range is checked after, by the codec.
pub fn decode(datatype: Option<u32>, v: &MetricValue) -> Result<Value, String> {
    // A narrow signed value comes in its type's width (Int8 -1 as 0xFF, how Tahu and
    // pysparkplug write it) or sign-extended to 32 bits (0xFFFF_FFFF); both name -1.
    let signed = |i: u32, bits: u32| -> Option<i64> {
        let (lo, hi) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
        if u64::from(i) < (1u64 << bits) {
            let x = i64::from(i);
            Some(if x > hi { x - (1i64 << bits) } else { x })
        } else {
            Some(i64::from(i as i32)).filter(|x| (lo..=hi).contains(x))
        }
    };
    let unsigned =
        |i: u32, bits: u32| (u64::from(i) < (1u64 << bits)).then(|| Value::UInt(i.into()));
    let fits = |x: Option<Value>, name: &str| {
        x.ok_or_else(|| format!("value {} does not fit its datatype {name}", show(v)))
    };
    match (datatype, v) {
        (Some(1), MetricValue::Int(i)) => fits(signed(*i, 8).map(Value::Int), "Int8"),
        (Some(2), MetricValue::Int(i)) => fits(signed(*i, 16).map(Value::Int), "Int16"),
        (Some(3), MetricValue::Int(i)) => Ok(Value::Int(i64::from(*i as i32))),
        (Some(4), MetricValue::Long(l)) => Ok(Value::Int(*l as i64)),
        (Some(5), MetricValue::Int(i)) => fits(unsigned(*i, 8), "UInt8"),
        (Some(6), MetricValue::Int(i)) => fits(unsigned(*i, 16), "UInt16"),
        (Some(7) | None, MetricValue::Int(i)) => Ok(Value::UInt(u64::from(*i))),
        (Some(8 | 13) | None, MetricValue::Long(l)) => Ok(Value::UInt(*l)),
        (Some(9) | None, MetricValue::Float(f)) => Ok(Value::Float(f64::from(*f))),
        (Some(10) | None, MetricValue::Double(f)) => Ok(Value::Float(*f)),
        (Some(11) | None, MetricValue::Boolean(b)) => Ok(Value::Bool(*b)),
        (Some(12 | 14 | 15) | None, MetricValue::String(s)) => Ok(Value::Text(s.clone())),
        (_, MetricValue::Bytes(_)) => Err("a bytes value writes to no point".into()),
        (Some(t), _) => Err(format!(
            "value {} is not in the field datatype {t} uses",
            show(v)
        )),
    }
}

/// A metric's value as a person reads it in a log line.
fn show(v: &MetricValue) -> String {
    match v {
        MetricValue::Int(i) => i.to_string(),
        MetricValue::Long(l) => l.to_string(),
        MetricValue::Float(f) => f.to_string(),
        MetricValue::Double(f) => f.to_string(),
        MetricValue::Boolean(b) => b.to_string(),
        MetricValue::String(s) => format!("{:?}", s.chars().take(40).collect::<String>()),
        MetricValue::Bytes(b) => format!("{} bytes", b.len()),
    }
}

/// The `Quality` property (a host convention, not Sparkplug's): the OPC-style codes of
/// Ignition's legacy quality, 192 good, 0 bad, 500 stale.
pub fn quality_code(q: Quality) -> u32 {
    match q {
        Quality::Good => 192,
        Quality::Bad => 0,
        Quality::Stale => 500,
    }
}

impl PropertySet {
    pub fn push(&mut self, key: &str, value: PropertyValueKind) {
        let datatype = match value {
            PropertyValueKind::Int(_) => 3,
            PropertyValueKind::Long(_) => 4,
            PropertyValueKind::Float(_) => 9,
            PropertyValueKind::Double(_) => 10,
            PropertyValueKind::Boolean(_) => 11,
            PropertyValueKind::String(_) => 12,
        };
        self.keys.push(key.to_string());
        self.values.push(PropertyValue {
            datatype: Some(datatype),
            is_null: None,
            value: Some(value),
        });
    }
}

/// A point as a metric: where it sits and what it is.
pub struct MetricOf {
    pub alias: u64,
    pub datatype: DataType,
}

/// A node metric with its name (births).
pub fn named(name: &str, alias: u64, t: DataType, v: MetricValue) -> Metric {
    Metric {
        name: Some(name.into()),
        alias: Some(alias),
        datatype: Some(t as u32),
        value: Some(v),
        ..Metric::default()
    }
}

/// A point in a DBIRTH: name, alias, datatype, current value, and its properties.
pub fn birth_metric(point: &Point, m: &MetricOf, now: &PointLive) -> Metric {
    let mut props = PropertySet::default();
    if !point.unit.is_empty() {
        props.push("engUnit", PropertyValueKind::String(point.unit.clone()));
    }
    if let Some(lo) = point.min {
        props.push("engLow", PropertyValueKind::Double(lo));
    }
    if let Some(hi) = point.max {
        props.push("engHigh", PropertyValueKind::Double(hi));
    }
    props.push("Quality", PropertyValueKind::Int(quality_code(now.quality)));
    let value = now.value.as_ref().and_then(|v| m.datatype.encode(v));
    Metric {
        name: Some(point.id.clone()),
        alias: Some(m.alias),
        timestamp: (now.ts > 0).then_some(now.ts as u64),
        datatype: Some(m.datatype as u32),
        is_null: value.is_none().then_some(true),
        properties: Some(props),
        value,
        ..Metric::default()
    }
}

/// A point in DDATA: by alias, with its sample time. `Quality` is sent only when it is not
/// good (192), the value a host assumes without it.
pub fn data_metric(
    m: &MetricOf,
    ts: Millis,
    value: Option<&Value>,
    quality: Quality,
    historical: bool,
) -> Metric {
    let value = value.and_then(|v| m.datatype.encode(v));
    let properties = (quality != Quality::Good).then(|| {
        let mut props = PropertySet::default();
        props.push("Quality", PropertyValueKind::Int(quality_code(quality)));
        props
    });
    Metric {
        alias: Some(m.alias),
        timestamp: Some(ts as u64),
        is_historical: historical.then_some(true),
        is_null: value.is_none().then_some(true),
        properties,
        value,
        ..Metric::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn a_metric_round_trips_and_its_bytes_follow_the_field_numbers() {
        let m = Metric {
            name: Some("t".into()),
            alias: Some(3),
            timestamp: Some(1),
            datatype: Some(DataType::Int16 as u32),
            value: DataType::Int16.encode(&Value::Int(-2)),
            ..Metric::default()
        };
        let p = Payload {
            timestamp: Some(5),
            metrics: vec![m],
            seq: Some(0),
            ..Payload::default()
        };
        let bytes = p.encode_to_vec();
        // timestamp = 5: field 1, varint.
        assert_eq!(&bytes[..2], &[0x08, 5]);
        let back = Payload::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, p);
        // -2 as Int16 is 0xFFFE in int_value (field 10).
        assert_eq!(back.metrics[0].value, Some(MetricValue::Int(0xFFFE)));
        let v = back.metrics[0].value.as_ref().unwrap();
        assert_eq!(decode(Some(2), v), Ok(Value::Int(-2)));
    }

    #[test]
    fn types_map_from_points() {
        assert_eq!(DataType::of(PointType::U16, false), DataType::UInt16);
        assert_eq!(DataType::of(PointType::U16, true), DataType::Double);
        assert_eq!(DataType::of(PointType::Bool, true), DataType::Boolean);
        assert_eq!(DataType::of(PointType::F32, false), DataType::Float);
        assert_eq!(
            DataType::Int64.encode(&Value::Int(-5)),
            Some(MetricValue::Long(u64::MAX - 4))
        );
        assert_eq!(DataType::UInt16.encode(&Value::Text("x".into())), None);
    }

    /// The hostile test's DCMDs: Int8 300 was written as 44 and Int16 70,000 as 4464.
    #[test]
    fn a_command_value_outside_its_datatype_is_refused_not_truncated() {
        let int = |i: u32| MetricValue::Int(i);
        assert!(decode(Some(1), &int(300)).is_err());
        assert!(decode(Some(2), &int(70_000)).is_err());
        assert!(decode(Some(5), &int(256)).is_err());
        assert!(decode(Some(6), &int(65_536)).is_err());
        // Negative values in the type's width or sign-extended to 32 bits.
        assert_eq!(decode(Some(1), &int(0xFF)), Ok(Value::Int(-1)));
        assert_eq!(decode(Some(1), &int(0xFFFF_FFFF)), Ok(Value::Int(-1)));
        assert_eq!(decode(Some(1), &int(0x7F)), Ok(Value::Int(127)));
        assert!(decode(Some(1), &int(0xFFFF_FF00)).is_err());
        assert_eq!(decode(Some(2), &int(0x8000)), Ok(Value::Int(-32768)));
        assert_eq!(decode(Some(5), &int(255)), Ok(Value::UInt(255)));
        assert_eq!(
            decode(Some(4), &MetricValue::Long(u64::MAX)),
            Ok(Value::Int(-1))
        );
        // A field the datatype does not use.
        assert!(decode(Some(2), &MetricValue::Long(5)).is_err());
        assert!(decode(Some(9), &MetricValue::Double(1.5)).is_err());
        assert!(decode(Some(11), &int(1)).is_err());
        assert!(decode(None, &MetricValue::Bytes(vec![1])).is_err());
        assert_eq!(decode(None, &int(7)), Ok(Value::UInt(7)));
    }
}
