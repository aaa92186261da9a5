//! Commissioning on a live bus (admin): `registers.read` of any unit id, `bus.scan` with its
//! `push.scan` progress, `bus.scanCancel`. The bus task does each in its turn, so polling goes
//! on and the port is never opened twice.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tokio::sync::{mpsc, oneshot};
use tungstenite::Utf8Bytes;

use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::metrics::PushKind;
use crate::modbus::bus::{ScanDone, ScanRequest, ScanStep};
use crate::modbus::codec::Table;
use crate::modbus::reply::Data;
use crate::ws::client::Push;

/// Unit ids a scan or a raw read may address: 0 is broadcast (nobody answers it).
const UNITS: std::ops::RangeInclusive<i64> = 1..=247;

fn table(ctx: &Ctx, default: &str) -> Result<(Table, String), ServiceError> {
    let name = ctx.opt_string("table")?.unwrap_or_else(|| default.into());
    let table = Table::parse(&name).ok_or_else(|| {
        ServiceError::bad_request("param `table` must be coil, discrete, input or holding")
    })?;
    Ok((table, name))
}

fn unit(ctx: &Ctx, name: &str, default: Option<i64>) -> Result<u8, ServiceError> {
    let v = match default {
        Some(d) => ctx.int_or(name, d)?,
        None => ctx.int(name)?,
    };
    if !UNITS.contains(&v) {
        return Err(ServiceError::bad_request(format!(
            "param `{name}` must be 1..=247"
        )));
    }
    Ok(v as u8)
}

/// `registers.read`: raw registers or bits of a device (`deviceId`) or of any unit id on a
/// configured bus (`bus` + `unit`), for the register inspector to decode every way.
pub async fn read_registers(ctx: Ctx) -> HandlerResult {
    let (bus, unit_id, device) = match ctx.opt_string("deviceId")? {
        Some(id) => {
            let d = ctx.device(&id)?;
            let dev = &ctx.shared.config.devices[d];
            (dev.bus, dev.unit, Some(id))
        }
        None => (
            ctx.bus(&ctx.string("bus")?)?,
            unit(&ctx, "unit", None)?,
            None,
        ),
    };
    let (table, table_name) = table(&ctx, "holding")?;
    let address = ctx.int_or("address", 0)?;
    let count = ctx.int_or("count", 4)?;
    let max = if table.is_bits() { 2000 } else { 125 };
    if !(0..=65535).contains(&address) {
        return Err(ServiceError::bad_request(
            "param `address` must be 0..=65535",
        ));
    }
    if !(1..=max).contains(&count) || address + count > 65536 {
        return Err(ServiceError::bad_request(format!(
            "param `count` must be 1..={max} and stay within the address space"
        )));
    }
    let r = ctx
        .shared
        .control
        .read_raw(bus, unit_id, table, address as u16, count as u16)
        .await;
    let data = match r {
        Ok(Ok(Data::Registers(regs))) => json!({ "registers": regs }),
        Ok(Ok(Data::Bits(bits))) => json!({ "bits": bits }),
        Ok(Err(code)) => return Err(ServiceError::new(503, format!("device answered {code}"))),
        Err(e) => return Err(ServiceError::new(503, format!("device unreachable: {e}"))),
    };
    let mut out = json!({
        "bus": ctx.shared.config.buses[bus].name,
        "unit": unit_id,
        "table": table_name,
        "address": address,
    });
    if let Some(id) = device {
        out["deviceId"] = json!(id);
    }
    if let (Some(o), Json::Object(extra)) = (out.as_object_mut(), data) {
        o.extend(extra);
    }
    Ok(out)
}

fn step_json(bus: &str, s: &ScanStep) -> Json {
    let mut j = json!({ "bus": bus, "unit": s.unit, "found": s.found });
    if let Some(code) = s.exception {
        j["exception"] = json!(code.to_string());
    }
    j
}

/// `bus.scan`: probes `fromUnit..=toUnit` (default 1…247) with one short read each, taking
/// turns with the polls; each probe is pushed to this client as `push.scan`; replies with the
/// units that answered (an exception answer counts).
pub async fn scan(ctx: Ctx) -> HandlerResult {
    let bus = ctx.bus(&ctx.string("bus")?)?;
    let from = unit(&ctx, "fromUnit", Some(1))?;
    let to = unit(&ctx, "toUnit", Some(247))?;
    if from > to {
        return Err(ServiceError::bad_request("`fromUnit` is after `toUnit`"));
    }
    let (table, _) = table(&ctx, "holding")?;
    let address = ctx.int_or("address", 0)?;
    if !(0..=65535).contains(&address) {
        return Err(ServiceError::bad_request(
            "param `address` must be 0..=65535",
        ));
    }
    let timeout_ms = ctx.int_or("timeoutMs", 100)?;
    if !(10..=5000).contains(&timeout_ms) {
        return Err(ServiceError::bad_request(
            "param `timeoutMs` must be 10..=5000",
        ));
    }
    let (progress, mut steps) = mpsc::unbounded_channel();
    let (reply, mut done) = oneshot::channel();
    let req = ScanRequest {
        from,
        to,
        table,
        address: address as u16,
        timeout: Duration::from_millis(timeout_ms as u64),
        progress,
        reply,
    };
    ctx.shared
        .control
        .scan(bus, req)
        .await
        .map_err(|e| ServiceError::new(503, e))?;
    let name = ctx.shared.config.buses[bus].name.clone();
    let push = |s: &ScanStep| {
        let frame = json!({ "service": "push.scan", "data": step_json(&name, s) });
        ctx.client.offer(
            Push {
                frame: Utf8Bytes::from(frame.to_string()),
                kind: PushKind::Event,
                since: Instant::now(),
                urgent: false,
                priority: None,
            },
            &ctx.shared.metrics,
        );
    };
    let result = loop {
        tokio::select! {
            biased;
            Some(s) = steps.recv() => push(&s),
            r = &mut done => break r,
        }
    };
    while let Ok(s) = steps.try_recv() {
        push(&s);
    }
    scan_reply(&name, result)
}

/// The scan's reply: the units found (one server answering for every id is one device, not
/// 247: beyond SPEC, `everyId` and `note` say why only the first is listed), or why it stopped.
fn scan_reply(
    name: &str,
    result: Result<Result<ScanDone, String>, oneshot::error::RecvError>,
) -> HandlerResult {
    match result {
        Ok(Ok(d)) => {
            let found = if d.every_id {
                &d.found[..d.found.len().min(1)]
            } else {
                &d.found[..]
            };
            let mut reply = json!({
                "bus": name,
                "units": found.iter().map(|s| s.unit).collect::<Vec<_>>(),
                "found": found.iter().map(|s| step_json(name, s)).collect::<Vec<_>>(),
                "cancelled": d.cancelled,
                "everyId": d.every_id,
            });
            if d.every_id {
                reply["note"] = json!("answers every unit id the same way: probably a single device or a gateway; try unit 1 or 255");
            } else if let Some(code) = d.no_device_answer {
                reply["note"] = json!(format!(
                    "most ids answered \"{code}\": the server's way of saying no device has that id; those are not listed"
                ));
            }
            Ok(reply)
        }
        Ok(Err(e)) if e.contains("already running") => Err(ServiceError::new(429, e)),
        Ok(Err(e)) => Err(ServiceError::new(503, e)),
        Err(_) => Err(ServiceError::new(503, "the bus stopped during the scan")),
    }
}

/// `bus.scanCancel`: ends the bus's running scan after the probe in progress.
pub async fn scan_cancel(ctx: Ctx) -> HandlerResult {
    let bus = ctx.bus(&ctx.string("bus")?)?;
    ctx.shared.control.scan_cancel(bus).await;
    Ok(json!({ "bus": ctx.shared.config.buses[bus].name }))
}
