//! `devices.list`, `devices.describe`, `points.history`, `device.write`.

use serde_json::{json, Value as Json};

use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::config::Config;
use crate::modbus::bus::WriteError;
use crate::model::{now_ms, rfc3339, Value};
use crate::state::{self, SharedLive};
use crate::store::Lane;

/// Every device as `devices.list` and `push.snapshot` give it (SPEC shape).
pub fn devices_json(config: &Config, live: &SharedLive) -> Json {
    let live = state::read(live);
    let devices: Vec<Json> = config
        .devices
        .iter()
        .zip(live.devices.iter())
        .map(|(d, l)| {
            let points: Vec<Json> = d
                .points
                .iter()
                .zip(l.points.iter())
                .map(|(p, pl)| {
                    json!({
                        "id": p.id,
                        "value": pl.value.as_ref().map(Value::to_json),
                        "quality": pl.quality.as_str(),
                        "unit": p.unit,
                        "ts": (pl.ts > 0).then(|| rfc3339(pl.ts)),
                    })
                })
                .collect();
            json!({
                "id": d.id,
                "type": d.device_type,
                "online": l.online,
                "lastSeen": l.last_seen.map(rfc3339),
                "points": points,
            })
        })
        .collect();
    Json::Array(devices)
}

pub async fn list(ctx: Ctx) -> HandlerResult {
    Ok(json!({ "devices": devices_json(&ctx.shared.config, &ctx.shared.live) }))
}

/// The most rows one history request returns.
const HISTORY_MAX: i64 = 10_000;

pub async fn history(ctx: Ctx) -> HandlerResult {
    let d = ctx.device(&ctx.string("deviceId")?)?;
    let p = ctx.point(d, &ctx.string("pointId")?)?;
    let until = ctx.opt_time("until")?.unwrap_or_else(now_ms);
    let since = ctx.opt_time("since")?.unwrap_or(until - 3_600_000);
    if let Some(n) = ctx.opt_int("buckets")? {
        return history_buckets(&ctx, d, p, since, until, n).await;
    }
    let limit = ctx.int_or("limit", 1000)?;
    if !(1..=HISTORY_MAX).contains(&limit) {
        return Err(ServiceError::bad_request(format!(
            "param `limit` must be 1..={HISTORY_MAX}"
        )));
    }
    let rows = super::read_store_in(&ctx, Lane::Long, move |conn, config| {
        let dev = &config.devices[d];
        crate::store::history(conn, dev, &dev.points[p], since, until, limit as usize)
    })
    .await?;
    let rows: Vec<Json> = rows
        .into_iter()
        .map(|(ts, v, q)| json!({"ts": rfc3339(ts), "v": v.as_ref().map(Value::to_json), "q": q.as_str()}))
        .collect();
    let dev = &ctx.shared.config.devices[d];
    Ok(json!({"deviceId": dev.id, "pointId": dev.points[p].id, "rows": rows}))
}

/// The rule thresholds on one point, for the trend's lines: each rule's raising value and, with
/// hysteresis, its clearing one.
fn thresholds(config: &crate::config::Config, device: usize, point: usize) -> Vec<Json> {
    use crate::config::RuleKind;
    let mut out = Vec::new();
    for r in config
        .rules
        .iter()
        .filter(|r| r.device == device && r.point == Some(point))
    {
        let mut line = |value: f64, clear: bool| {
            out.push(json!({ "rule": r.id, "value": value, "clear": clear }));
        };
        match r.kind {
            RuleKind::Above { threshold, clear } | RuleKind::Below { threshold, clear } => {
                line(threshold, false);
                if clear != threshold {
                    line(clear, true);
                }
            }
            RuleKind::Outside { low, high, clear } => {
                line(low, false);
                line(high, false);
                if let Some(c) = clear {
                    line(low + c, true);
                    line(high - c, true);
                }
            }
            RuleKind::Equals { threshold } => line(threshold, false),
            RuleKind::Rate { .. } | RuleKind::Stale | RuleKind::Expr(_) => {}
        }
    }
    out
}

/// The most buckets a downsampled history gives: more pixel columns than any screen has.
const BUCKETS_MAX: i64 = 4000;

/// `points.history` with `buckets` (beyond SPEC, for the trends): the range folded into that
/// many time buckets, each with min, max and last value, and whether a bad reading fell in it.
async fn history_buckets(
    ctx: &Ctx,
    d: usize,
    p: usize,
    since: i64,
    until: i64,
    n: i64,
) -> HandlerResult {
    if !(1..=BUCKETS_MAX).contains(&n) {
        return Err(ServiceError::bad_request(format!(
            "param `buckets` must be 1..={BUCKETS_MAX}"
        )));
    }
    let buckets = super::read_store_in(ctx, Lane::Long, move |conn, config| {
        let dev = &config.devices[d];
        crate::store::history_buckets(conn, dev, &dev.points[p], since, until, n as usize)
    })
    .await?;
    let buckets: Vec<Json> = buckets
        .into_iter()
        .map(|b| {
            let num = |x: f64| if x.is_finite() { json!(x) } else { Json::Null };
            json!({
                "ts": rfc3339(b.start),
                "min": num(b.min),
                "max": num(b.max),
                "v": num(b.last),
                "lastTs": rfc3339(b.last_ts),
                "gap": b.gap,
            })
        })
        .collect();
    let dev = &ctx.shared.config.devices[d];
    Ok(json!({
        "deviceId": dev.id,
        "pointId": dev.points[p].id,
        "since": rfc3339(since),
        "until": rfc3339(until),
        "buckets": buckets,
    }))
}

pub async fn write(ctx: Ctx) -> HandlerResult {
    let d = ctx.device(&ctx.string("deviceId")?)?;
    let p = ctx.point(d, &ctx.string("pointId")?)?;
    let value = Value::from_json(&ctx.value("value")?).map_err(ServiceError::bad_request)?;
    let user = ctx.client.login().map(|l| l.user).unwrap_or_default();
    let old = ctx
        .shared
        .control
        .write_audited(&user, "ws", d, p, value.clone())
        .await;
    match old {
        Ok(w) => {
            let dev = &ctx.shared.config.devices[d];
            Ok(json!({
                "deviceId": dev.id,
                "pointId": dev.points[p].id,
                "old": w.old.as_ref().map(Value::to_json),
                "value": value.to_json(),
                "readBack": w.read_back.as_ref().map(Value::to_json),
            }))
        }
        Err(e @ WriteError::Encode(_)) => {
            Err(ServiceError::new(e.code(), format!("param `value`: {e}")))
        }
        Err(e) => Err(ServiceError::new(e.code(), e.to_string())),
    }
}

/// Lower-case names of the codec's enums (their Debug names are the config's words).
pub(super) fn word<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

/// `devices.describe`: the configuration the dashboard needs beside live values (types,
/// addresses, writability, ranges, orders).
pub async fn describe(ctx: Ctx) -> HandlerResult {
    let config = &ctx.shared.config;
    let devices: Vec<Json> = config
        .devices
        .iter()
        .enumerate()
        .map(|(di, d)| {
            let points: Vec<Json> = d
                .points
                .iter()
                .enumerate()
                .map(|(pi, p)| {
                    json!({
                        "thresholds": thresholds(config, di, pi),
                        "id": p.id,
                        "type": word(p.format.data_type),
                        "table": p.format.table.to_string(),
                        "address": p.address,
                        "unit": p.unit,
                        "writable": p.writable,
                        "min": p.min,
                        "max": p.max,
                        "scale": p.format.scale,
                        "offset": p.format.offset,
                        "byteOrder": word(p.format.byte_order),
                        "wordOrder": word(p.format.word_order),
                        "deadband": p.deadband,
                        "reportEveryS": p.report_every.as_secs(),
                        // What a write can hold: the dashboard refuses the rest before asking.
                        "writeRange": crate::modbus::codec::write_range(&p.format)
                            .map(|(lo, hi, step)| json!({ "min": lo, "max": hi, "step": step })),
                    })
                })
                .collect();
            let first = d.points.first().map(|p| &p.format);
            json!({
                "id": d.id,
                "type": d.device_type,
                "bus": config.buses[d.bus].name,
                "unit": d.unit,
                "pollIntervalMs": u64::try_from(d.poll_interval.as_millis()).unwrap_or(u64::MAX),
                "byteOrder": first.map(|f| word(f.byte_order)),
                "wordOrder": first.map(|f| word(f.word_order)),
                "points": points,
            })
        })
        .collect();
    // Every bus, also one without devices yet: the inspector and a scan address any of them.
    let buses: Vec<&str> = ctx
        .shared
        .config
        .buses
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    Ok(json!({ "devices": devices, "buses": buses }))
}
