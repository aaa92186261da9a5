//! `run --once` and `check-config --probe`: every bus connected, every device polled once, and
//! per device what each point read (raw registers in hex, the value with its unit and quality,
//! or the error) — a config proved against the real devices before the service is enabled.

use std::fmt::Write as _;

use crate::config::Config;
use crate::modbus::bus::decode_point;
use crate::modbus::codec::CodecError;
use crate::modbus::link::Link;
use crate::modbus::plan;
use crate::modbus::reply::{Data, LinkError};

/// Polls every device of `config` once, buses in turn, and writes the report to `out`.
/// Returns whether every device answered every read.
pub async fn once(config: &Config, out: &mut impl std::io::Write) -> bool {
    let mut all = true;
    for (b, bus) in config.buses.iter().enumerate() {
        let mut link = Link::new(bus.link.clone(), bus.timeout, bus.inter_request_delay);
        for d in config.devices.iter().filter(|d| d.bus == b) {
            let (text, answered) = device(&mut link, d, bus.retries).await;
            all &= answered;
            let _ = write!(
                out,
                "device {} (bus {}, {}, unit {}): {}\n{text}",
                d.id,
                bus.name,
                link.describe(),
                d.unit,
                if answered { "ok" } else { "FAILED" }
            );
        }
    }
    all
}

/// One device's reads as a table; whether the device answered them all (an exception is an
/// answer: the device is there and said no).
async fn device(link: &mut Link, d: &crate::config::Device, retries: u32) -> (String, bool) {
    let spans = plan::spans(d);
    let mut text = String::new();
    let mut answered = true;
    let read = (0..spans.len())
        .filter(|&i| !d.points[i].calculated)
        .collect();
    for block in plan::plan_some(&spans, read, d.max_registers_per_read, d.max_gap) {
        let mut reply = link
            .read(d.unit, block.table, block.start, block.count)
            .await;
        for _ in 0..retries {
            match reply {
                Err(LinkError::Down { .. }) | Ok(_) => break,
                Err(_) => {
                    reply = link
                        .read(d.unit, block.table, block.start, block.count)
                        .await;
                }
            }
        }
        answered &= reply.is_ok();
        for &i in &block.points {
            let p = &d.points[i];
            let at = format!("{} {}", p.format.table, p.address);
            let (raw, shown) = match &reply {
                Ok(Ok(data)) => (
                    raw_hex(data, p.address - block.start, p.format.width()),
                    match decode_point(p, &block, data) {
                        Ok(v) if p.unit.is_empty() => format!("{v}  good"),
                        Ok(v) => format!("{v} {}  good", p.unit),
                        Err(CodecError::NotFinite(x)) => format!("{x}  bad (not a number)"),
                        Err(e) => format!("bad ({e})"),
                    },
                ),
                Ok(Err(code)) => (
                    "-".into(),
                    format!("bad (exception 0x{:02X}: {code})", code.code()),
                ),
                Err(e) => ("-".into(), format!("bad ({e})")),
            };
            let _ = writeln!(text, "  {:<20} {at:<14} {raw:<24} {shown}", p.id);
        }
    }
    (text, answered)
}

/// A point's registers in hex (`0x42A0 0x0000`), or its bit (`1`).
fn raw_hex(data: &Data, offset: u16, width: u16) -> String {
    let range = usize::from(offset)..usize::from(offset) + usize::from(width);
    match data {
        Data::Bits(bits) => bits
            .get(usize::from(offset))
            .map_or("-".into(), |b| u8::from(*b).to_string()),
        Data::Registers(regs) => regs.get(range).map_or("-".into(), |r| {
            r.iter()
                .map(|x| format!("0x{x:04X}"))
                .collect::<Vec<_>>()
                .join(" ")
        }),
    }
}
