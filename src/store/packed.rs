//! The compact encoding of one device sample's points (one history and outbox row per device
//! sample instead of one per point), and the integer keys that stand for device and point ids.
//!
//! A sample is a sequence of entries: the point's key as a zig-zag varint delta from the
//! previous entry's key (points of a device get consecutive keys, so usually one byte), one tag
//! byte (quality in the low two bits, the value's kind above), then the value: varints for
//! integers, 4 bytes for a float that is exactly an `f32` (every 16-bit register scaled by 0.1
//! is not, but a raw `f32` point is), else 8, and length-prefixed UTF-8 for text. A sample of
//! 30 u16 points is ~120 bytes where the row-per-point table spent ~1.5 KB with its indexes.
//! Values keep their exact kind (bool, signed, unsigned, float, text), so decoding needs no
//! config.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use crate::model::float::short_f32;
use crate::model::{Quality, Value};

/// One point of a sample: its key, value (none when the read gave none) and quality.
pub type Entry = (i64, Option<Value>, Quality);

const NONE: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const UINT: u8 = 4;
const F64: u8 = 5;
const F32: u8 = 6;
const TEXT: u8 = 7;

fn quality_bits(q: Quality) -> u8 {
    match q {
        Quality::Good => 0,
        Quality::Bad => 1,
        Quality::Stale => 2,
    }
}

fn quality_of(bits: u8) -> Quality {
    match bits & 3 {
        0 => Quality::Good,
        1 => Quality::Bad,
        _ => Quality::Stale,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends one entry to a sample being encoded; `prev` is the previous entry's key (0 first).
pub fn push(out: &mut Vec<u8>, prev: &mut i64, key: i64, value: Option<&Value>, quality: Quality) {
    put_varint(out, zigzag(key - *prev));
    *prev = key;
    let q = quality_bits(quality);
    let tag = |kind: u8| (kind << 2) | q;
    match value {
        None => out.push(tag(NONE)),
        Some(Value::Bool(false)) => out.push(tag(FALSE)),
        Some(Value::Bool(true)) => out.push(tag(TRUE)),
        Some(Value::Int(i)) => {
            out.push(tag(INT));
            put_varint(out, zigzag(*i));
        }
        Some(Value::UInt(u)) => {
            out.push(tag(UINT));
            put_varint(out, *u);
        }
        // Four bytes where they give the value back: an f32 as decoded (its shortest decimal,
        // which is what `F32` reads back as) or one held exactly.
        Some(Value::Float(f))
            if f.is_nan() || f64::from(*f as f32) == *f || short_f32(*f as f32) == *f =>
        {
            out.push(tag(F32));
            out.extend_from_slice(&(*f as f32).to_le_bytes());
        }
        Some(Value::Float(f)) => {
            out.push(tag(F64));
            out.extend_from_slice(&f.to_le_bytes());
        }
        Some(Value::Text(s)) => {
            out.push(tag(TEXT));
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Encodes a whole sample.
pub fn encode<'a>(entries: impl IntoIterator<Item = (i64, Option<&'a Value>, Quality)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut prev = 0;
    for (key, value, quality) in entries {
        push(&mut out, &mut prev, key, value, quality);
    }
    out
}

/// A sample that does not decode: a damaged row (the rest of it is skipped, never guessed).
#[derive(Debug, PartialEq)]
pub struct Damaged;

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Damaged> {
        let b = *self.buf.get(self.at).ok_or(Damaged)?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, Damaged> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Damaged)
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], Damaged> {
        let end = self.at.checked_add(n).ok_or(Damaged)?;
        let b = self.buf.get(self.at..end).ok_or(Damaged)?;
        self.at = end;
        Ok(b)
    }
}

/// Decodes a sample's entries in the order they were written.
pub fn decode(buf: &[u8]) -> Result<Vec<Entry>, Damaged> {
    let mut r = Reader { buf, at: 0 };
    let mut out = Vec::new();
    let mut key = 0i64;
    while r.at < buf.len() {
        key += unzigzag(r.varint()?);
        let tag = r.byte()?;
        let value = match tag >> 2 {
            NONE => None,
            FALSE => Some(Value::Bool(false)),
            TRUE => Some(Value::Bool(true)),
            INT => Some(Value::Int(unzigzag(r.varint()?))),
            UINT => Some(Value::UInt(r.varint()?)),
            F32 => Some(Value::Float(short_f32(f32::from_le_bytes(
                r.bytes(4)?.try_into().map_err(|_| Damaged)?,
            )))),
            F64 => Some(Value::Float(f64::from_le_bytes(
                r.bytes(8)?.try_into().map_err(|_| Damaged)?,
            ))),
            TEXT => {
                let n = r.varint()? as usize;
                Some(Value::Text(
                    String::from_utf8(r.bytes(n)?.to_vec()).map_err(|_| Damaged)?,
                ))
            }
            _ => return Err(Damaged),
        };
        out.push((key, value, quality_of(tag)));
    }
    Ok(out)
}

/// The key of a device (`point` `""`) or of one of its points, created on first use. Keys are
/// never renumbered or reused, so history written under an older config still decodes.
pub fn key(conn: &Connection, device: &str, point: &str) -> rusqlite::Result<i64> {
    if let Some(k) = find_key(conn, device, point)? {
        return Ok(k);
    }
    conn.prepare_cached("INSERT INTO names (device_id, point_id) VALUES (?1, ?2)")?
        .execute([device, point])?;
    Ok(conn.last_insert_rowid())
}

/// The key of a device or point, if it ever had one.
pub fn find_key(conn: &Connection, device: &str, point: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM names WHERE device_id = ?1 AND point_id = ?2")?
        .query_row([device, point], |r| r.get(0))
        .optional()
}

/// A device's id and its points' ids, which a sample's points name by index: one table a
/// device, shared by every sample. A name per value (an `Arc<str>` each) was a shared count
/// taken on the writer's thread and dropped on the sinks', its cache line bouncing between
/// cores for every value (~4 % of the gateway's CPU in session 28's perf profile).
#[derive(Debug, PartialEq)]
pub struct DeviceNames {
    pub device: String,
    pub points: Vec<String>,
}

/// Every key's device and point id, for a reader that decodes many samples (a sink), indexed
/// by key (keys are small and dense: SQLite's rowids from 1): a key is its device's table of
/// names and its index there. Reloaded when a key is missing: a reload of the config may have
/// added points since.
#[derive(Default)]
pub struct Names {
    by_key: Vec<Option<(Arc<DeviceNames>, u32)>>,
}

impl Names {
    /// Makes sure every key of `keys` is known, reading the table again (once) when one is
    /// not: after this, keys of one sample name the same device's table.
    pub fn cover(
        &mut self,
        conn: &Connection,
        mut keys: impl Iterator<Item = i64>,
    ) -> rusqlite::Result<()> {
        if keys.any(|k| self.get(k).is_none()) {
            self.reload(conn)?;
        }
        Ok(())
    }

    /// The table and index of `key`, as last read.
    pub fn get(&self, key: i64) -> Option<&(Arc<DeviceNames>, u32)> {
        let i = usize::try_from(key).ok()?;
        self.by_key.get(i)?.as_ref()
    }

    fn reload(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let mut q = conn.prepare_cached("SELECT id, device_id, point_id FROM names ORDER BY id")?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        // Each device's keys and points (in key order), then a table a device.
        let mut devices: HashMap<String, Vec<(usize, String)>> = HashMap::new();
        for row in rows {
            let (id, device, point) = row?;
            let Ok(key) = usize::try_from(id) else {
                continue;
            };
            devices.entry(device).or_default().push((key, point));
        }
        self.by_key.clear();
        for (device, keyed) in devices {
            let (keys, points): (Vec<usize>, Vec<String>) = keyed.into_iter().unzip();
            let table = Arc::new(DeviceNames { device, points });
            for (index, key) in (0u32..).zip(keys) {
                if key >= self.by_key.len() {
                    self.by_key.resize(key + 1, None);
                }
                self.by_key[key] = Some((table.clone(), index));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_value_comes_back_exactly() {
        let values = [
            None,
            Some(Value::Bool(false)),
            Some(Value::Bool(true)),
            Some(Value::Int(-5)),
            Some(Value::Int(i64::MIN)),
            Some(Value::UInt(u64::MAX)),
            Some(Value::Float(71.5)),
            Some(Value::Float(0.1)),
            Some(Value::Float(f64::INFINITY)),
            Some(Value::Text("Pümpe 3".into())),
        ];
        let qs = [Quality::Good, Quality::Bad, Quality::Stale];
        let entries: Vec<Entry> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (100 - 7 * i as i64, v.clone(), qs[i % 3]))
            .collect();
        let buf = encode(entries.iter().map(|(k, v, q)| (*k, v.as_ref(), *q)));
        assert_eq!(decode(&buf).unwrap(), entries);
    }

    #[test]
    fn thirty_register_values_take_about_four_bytes_each() {
        let entries: Vec<(i64, Value)> = (0..30)
            .map(|i| (1000 + i, Value::Int(40_000 + i)))
            .collect();
        let buf = encode(entries.iter().map(|(k, v)| (*k, Some(v), Quality::Good)));
        assert!(buf.len() <= 30 * 5 + 1, "{} bytes", buf.len());
    }

    #[test]
    fn a_damaged_sample_is_an_error_not_a_guess() {
        let buf = encode([(1, Some(&Value::Text("abc".into())), Quality::Good)]);
        assert_eq!(decode(&buf[..buf.len() - 1]), Err(Damaged));
        assert_eq!(decode(&[0x00, 0xff]), Err(Damaged));
    }
}
