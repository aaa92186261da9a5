//! A request to one unit answered from the gateway attached now: reads from the mirrored raw
//! words or the live values, writes mapped onto points and sent the audited strict path of
//! `device.write`, every refusal the exception SPEC names.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Config, Device, Layout};
use crate::control::Control;
use crate::modbus::bus::WriteError;
use crate::modbus::codec;
use crate::modbus::image::Images;
use crate::modbus::request::{
    self, Request, DEVICE_FAILURE, ILLEGAL_ADDRESS, ILLEGAL_FUNCTION, ILLEGAL_VALUE,
    PATH_UNAVAILABLE, TARGET_FAILED,
};
use crate::model::format::{DataType, Table};
use crate::model::{Quality, Value};
use crate::state::{self, Live};

/// Server busy: a write queued behind too many others on its bus.
const BUSY: u8 = 0x06;

/// What a gateway lends the server while it runs, and each unit's tables laid out once.
pub struct Attached {
    pub config: Arc<Config>,
    pub control: Arc<Control>,
    pub images: Arc<Images>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per `[[modbus_server.units]]` entry, per table (coil, discrete, input, holding): the
    /// points it shows, by address.
    maps: Vec<[Vec<Span>; 4]>,
    /// The widest point's width, for finding the first point a range reaches.
    widest: u32,
}

/// One point's place in a unit's table: its first address, width, and index.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    width: u32,
    point: usize,
}

const TABLES: [Table; 4] = [Table::Coil, Table::Discrete, Table::Input, Table::Holding];

fn table_index(t: Table) -> usize {
    TABLES.iter().position(|&x| x == t).unwrap_or(0)
}

impl Attached {
    pub fn new(
        config: Arc<Config>,
        control: Arc<Control>,
        images: Arc<Images>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Attached {
        let maps: Vec<[Vec<Span>; 4]> = config
            .modbus_server
            .units
            .iter()
            .map(|su| TABLES.map(|t| spans(&config.devices[su.device], su.layout, t)))
            .collect();
        let widest = maps.iter().flatten().flatten().map(|s| s.width).max();
        Attached {
            config,
            control,
            images,
            metrics,
            maps,
            widest: widest.unwrap_or(1),
        }
    }

    /// The answer PDU to `pdu` for unit `unit`, from client `peer`.
    pub async fn answer(&self, unit: u8, pdu: &[u8], peer: SocketAddr) -> Vec<u8> {
        let fc = pdu.first().copied().unwrap_or(0);
        let result = match request::parse(pdu) {
            Ok(req) => self.serve(unit, &req, peer).await,
            Err(code) => Err(code),
        };
        // Counted by the function asked for; anything not Modbus as "0", so a client cannot
        // make up label values.
        let counted = if matches!(fc, 1..=6 | 15 | 16) { fc } else { 0 };
        self.metrics
            .modbus_server
            .count(unit, counted, result.as_ref().err().copied());
        result.unwrap_or_else(|code| request::exception(fc, code))
    }

    async fn serve(&self, unit: u8, req: &Request, peer: SocketAddr) -> Result<Vec<u8>, u8> {
        let server = &self.config.modbus_server;
        let ui = (server.units.iter().position(|u| u.unit == unit)).ok_or(PATH_UNAVAILABLE)?;
        match *req {
            Request::Read {
                table,
                start,
                count,
            } => self.read(ui, table, start, count),
            _ if !server.allow_writes => Err(ILLEGAL_FUNCTION),
            _ => self.write(ui, req, peer).await,
        }
    }

    /// The points covering `start..start+count`, in address order: 02 when an address has
    /// none, 03 (for a write) when a point sticks out of the range.
    fn cover(
        &self,
        ui: usize,
        table: Table,
        start: u16,
        count: u16,
        whole: bool,
    ) -> Result<Vec<Span>, u8> {
        let (lo, hi) = (u32::from(start), u32::from(start) + u32::from(count));
        let all = &self.maps[ui][table_index(table)];
        // The first point that may reach `lo`: spans are sorted by start.
        let from = all.partition_point(|s| s.start + self.widest <= lo);
        let spans: Vec<Span> = all[from..]
            .iter()
            .take_while(|s| s.start < hi)
            .filter(|s| s.start + s.width > lo)
            .copied()
            .collect();
        let mut next = lo;
        for s in &spans {
            if s.start > next {
                return Err(ILLEGAL_ADDRESS);
            }
            next = next.max(s.start + s.width);
        }
        if next < hi {
            return Err(ILLEGAL_ADDRESS);
        }
        if whole && spans.iter().any(|s| s.start < lo || s.start + s.width > hi) {
            return Err(ILLEGAL_VALUE);
        }
        Ok(spans)
    }

    fn read(&self, ui: usize, table: Table, start: u16, count: u16) -> Result<Vec<u8>, u8> {
        let su = &self.config.modbus_server.units[ui];
        let spans = self.cover(ui, table, start, count, false)?;
        let live = state::read(&self.control.live);
        let dev_live = live.devices.get(su.device).ok_or(TARGET_FAILED)?;
        if !dev_live.online {
            return Err(TARGET_FAILED);
        }
        let mut words = vec![0u16; usize::from(count)];
        let (lo, hi) = (u32::from(start), u32::from(start) + u32::from(count));
        let mut put = |s: &Span, w: &[u16]| {
            for (k, &v) in w.iter().enumerate() {
                let a = s.start + k as u32;
                if (lo..hi).contains(&a) {
                    words[(a - lo) as usize] = v;
                }
            }
        };
        match su.layout {
            Layout::Mirror => {
                let image = self.images.device(su.device).ok_or(TARGET_FAILED)?.hold();
                for s in &spans {
                    good(&live, su.device, s.point)?;
                    put(s, image.get(s.point).ok_or(TARGET_FAILED)?);
                }
            }
            Layout::Float32 => {
                for s in &spans {
                    let v = good(&live, su.device, s.point)?;
                    if table.is_bits() {
                        put(s, &[u16::from(v.as_f64() != Some(0.0))]);
                    } else {
                        let f = v.as_f64().ok_or(TARGET_FAILED)? as f32;
                        let b = f.to_bits();
                        put(s, &[(b >> 16) as u16, b as u16]);
                    }
                }
            }
        }
        let fc = table.read_function();
        Ok(if table.is_bits() {
            let bits: Vec<bool> = words.iter().map(|&w| w != 0).collect();
            request::bits_reply(fc, &bits)
        } else {
            request::registers_reply(fc, &words)
        })
    }

    /// A write onto whole points, each in address order on the audited strict path; the
    /// first that fails ends the request with its exception.
    async fn write(&self, ui: usize, req: &Request, peer: SocketAddr) -> Result<Vec<u8>, u8> {
        let su = &self.config.modbus_server.units[ui];
        let (table, start, count) = req.write_range().ok_or(ILLEGAL_FUNCTION)?;
        let words = req.write_words();
        // Writes reach the coils and holding registers (in float32 as in the device); the
        // whole request is checked (02, 03, 01) before its first point is written.
        let spans = self.cover(ui, table, start, count, true)?;
        let dev = &self.config.devices[su.device];
        if spans.iter().any(|s| !dev.points[s.point].writable) {
            return Err(ILLEGAL_FUNCTION);
        }
        let who = format!("modbus:{}", peer.ip());
        for s in &spans {
            let at = (s.start - u32::from(start)) as usize;
            let w = &words[at..at + s.width as usize];
            let value = value_of(dev, su.layout, table, s.point, w)?;
            self.control
                .write_audited(&who, "modbus", su.device, s.point, value)
                .await
                .map_err(|e| exception_of(&e))?;
        }
        Ok(request::write_reply(req))
    }
}

/// Each point a unit of `layout` shows in `table`, sorted by address.
fn spans(dev: &Device, layout: Layout, table: Table) -> Vec<Span> {
    let mut spans: Vec<Span> = match layout {
        Layout::Mirror => dev
            .points
            .iter()
            .enumerate()
            // A calculated point has no registers of the device to mirror.
            .filter(|(_, p)| p.format.table == table && !p.calculated)
            .map(|(i, p)| Span {
                start: u32::from(p.address),
                width: u32::from(p.format.width()),
                point: i,
            })
            .collect(),
        Layout::Float32 if table.is_bits() => dev
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.format.data_type == DataType::Bool)
            .enumerate()
            .map(|(k, (i, _))| Span {
                start: k as u32,
                width: 1,
                point: i,
            })
            .collect(),
        Layout::Float32 => dev
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.format.data_type != DataType::String)
            .map(|(i, _)| Span {
                start: 2 * i as u32,
                width: 2,
                point: i,
            })
            .collect(),
    };
    spans.sort_by_key(|s| s.start);
    spans
}

/// Point `p`'s value when it may be served as fresh: the device online, the point good.
fn good(live: &Live, device: usize, p: usize) -> Result<&Value, u8> {
    let pl = live.devices[device].points.get(p).ok_or(TARGET_FAILED)?;
    match (&pl.value, pl.quality) {
        (Some(v), Quality::Good) => Ok(v),
        _ => Err(TARGET_FAILED),
    }
}

/// The value a master's words mean for point `p`: the device's own encoding in `mirror`, a
/// big-endian float (or a coil) in `float32`.
fn value_of(dev: &Device, layout: Layout, table: Table, p: usize, w: &[u16]) -> Result<Value, u8> {
    let point = &dev.points[p];
    let is_bool = point.format.data_type == DataType::Bool;
    match layout {
        Layout::Mirror if table == Table::Coil => Ok(Value::Bool(w[0] != 0)),
        Layout::Mirror => codec::decode_registers(&point.format, w).map_err(|_| ILLEGAL_VALUE),
        Layout::Float32 if table == Table::Coil => Ok(Value::Bool(w[0] != 0)),
        Layout::Float32 => {
            let f = f64::from(f32::from_bits(u32::from(w[0]) << 16 | u32::from(w[1])));
            if !f.is_finite() {
                return Err(ILLEGAL_VALUE);
            }
            Ok(match (is_bool, f) {
                (true, 0.0) => Value::Bool(false),
                (true, 1.0) => Value::Bool(true),
                (true, _) => return Err(ILLEGAL_VALUE),
                (false, f) => Value::Float(f),
            })
        }
    }
}

/// A failed write as the exception the master gets.
fn exception_of(e: &WriteError) -> u8 {
    match e {
        WriteError::NotWritable => ILLEGAL_FUNCTION,
        WriteError::Encode(_) => ILLEGAL_VALUE,
        // The device's own refusal, passed on as a gateway does.
        WriteError::Exception(e) if (1..0x80).contains(&e.code()) => e.code(),
        WriteError::Exception(_) => DEVICE_FAILURE,
        WriteError::Busy => BUSY,
        WriteError::Link(_) | WriteError::BusGone | WriteError::TooOld { .. } => TARGET_FAILED,
    }
}
