//! `config.edit`: the Configure view's forms as edits of the file's text (points, devices,
//! buses, rules, upstreams), each answered with the edited text, its problems and a summary;
//! nothing is written here.

use serde_json::{json, Value as Json};

use super::configure::{check, file, problems_json};
use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::config::edit::{self, Entries, NewPoint, PointEdit, Target};
use crate::config::versions;

fn new_point(j: &Json) -> Result<NewPoint, ServiceError> {
    let s = |k: &str, default: &str| -> Result<String, ServiceError> {
        match j.get(k) {
            None | Some(Json::Null) => Ok(default.to_string()),
            Some(Json::String(s)) => Ok(s.clone()),
            Some(_) => Err(ServiceError::bad_request(format!(
                "point `{k}` must be a string"
            ))),
        }
    };
    let opt = |k: &str| -> Result<Option<f64>, ServiceError> {
        match j.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ServiceError::bad_request(format!("point `{k}` must be a number"))),
        }
    };
    let f = |k: &str, default: f64| opt(k).map(|v| v.unwrap_or(default));
    let writable = match j.get("writable") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(_) => {
            return Err(ServiceError::bad_request(
                "point `writable` must be true or false",
            ))
        }
    };
    let address = j
        .get("address")
        .and_then(Json::as_u64)
        .and_then(|a| u16::try_from(a).ok())
        .ok_or_else(|| ServiceError::bad_request("point `address` must be 0..=65535"))?;
    Ok(NewPoint {
        id: s("id", "")?,
        table: s("table", "holding")?,
        address,
        data_type: s("type", "u16")?,
        byte_order: s("byteOrder", "big")?,
        word_order: s("wordOrder", "big")?,
        scale: f("scale", 1.0)?,
        offset: f("offset", 0.0)?,
        unit: s("unit", "")?,
        deadband: f("deadband", 0.0)?,
        min: opt("min")?,
        max: opt("max")?,
        writable,
    })
}

/// `deviceId`, or a `newDevice` `{id, bus, unit, type?}`.
fn target_param(ctx: &Ctx) -> Result<Target, ServiceError> {
    if let Some(id) = ctx.opt_string("deviceId")? {
        return Ok(Target::Device(id));
    }
    let d = ctx.value("newDevice")?;
    let field = |k: &str| {
        d.get(k)
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Target::NewDevice {
        id: field("id"),
        bus: field("bus"),
        unit: d
            .get("unit")
            .and_then(Json::as_u64)
            .and_then(|u| u8::try_from(u).ok())
            .ok_or_else(|| ServiceError::bad_request("`newDevice.unit` must be 1..=247"))?,
        device_type: field("type"),
    })
}

/// `config.edit` (for the dashboard): the file's text with a change made through `toml_edit`
/// (comments kept) — `addPoints` to `deviceId` or a `newDevice`, `setDevice`, `removeDevice`,
/// `setBus` / `removeBus`, `setRule` / `removeRule`, `setUpstream` (`[mysql]` or `[mqtt]`, or
/// `keys: null` to take it out) — and its problems; nothing is written (`config.apply` does
/// that). `devicePath` names the entry a form edited (`buses[2]`), for its problems.
pub async fn edit(ctx: Ctx) -> HandlerResult {
    let f = file(&ctx)?;
    let text = match ctx.opt_string("text")? {
        Some(t) => t,
        None => std::fs::read_to_string(&f.path).map_err(|e| {
            ServiceError::new(503, format!("cannot read {}: {e}", f.path.display()))
        })?,
    };
    let op = ctx.string("op")?;
    let done = match device_op(&ctx, &op, &text)? {
        Some(d) => d,
        None => entry_op(&ctx, &op, &text)?.ok_or_else(|| {
            ServiceError::bad_request(format!(
                "unknown op `{op}` (addPoints, setDevice, removeDevice, setBus, removeBus, setRule, removeRule, setCalculated, removeCalculated or setUpstream)"
            ))
        })?,
    };
    let edited = done.text.map_err(ServiceError::bad_request)?;
    let (problems, new) = check(&edited, &ctx.shared.config);
    let summary = new.map(|n| versions::summary(&ctx.shared.config, &n));
    Ok(json!({
        "text": edited,
        "problems": problems_json(&problems),
        "summary": summary,
        "note": done.note,
        "devicePath": done.path,
    }))
}

/// An op's outcome: the edited text (or why not), a note for the person, and the key path of
/// the entry a form edited (for its problems).
struct Edited {
    text: Result<String, String>,
    note: String,
    path: Json,
}

impl Edited {
    fn text(text: Result<String, String>) -> Edited {
        Edited {
            text,
            note: String::new(),
            path: Json::Null,
        }
    }

    /// The text, and the path of entry `i` of `list` when it was edited.
    fn at(edited: Result<(String, usize), String>, list: &str) -> Edited {
        match edited {
            Ok((t, i)) => Edited {
                text: Ok(t),
                note: String::new(),
                path: json!(format!("{list}[{i}]")),
            },
            Err(e) => Edited::text(Err(e)),
        }
    }
}

/// `addPoints`, `removeDevice`, `setDevice`; `None` for another op.
fn device_op(ctx: &Ctx, op: &str, text: &str) -> Result<Option<Edited>, ServiceError> {
    Ok(Some(match op {
        "addPoints" => {
            let points = match ctx.value("points")? {
                Json::Array(a) if !a.is_empty() => {
                    a.iter().map(new_point).collect::<Result<Vec<_>, _>>()?
                }
                _ => {
                    return Err(ServiceError::bad_request(
                        "param `points` must be a non-empty list",
                    ))
                }
            };
            let target = target_param(ctx)?;
            Edited::text(edit::add_points(text, &target, &points))
        }
        "removeDevice" => {
            let id = ctx.string("deviceId")?;
            match edit::remove_device(text, &id) {
                Ok((t, n)) => Edited {
                    text: Ok(t),
                    note: if n == 0 {
                        String::new()
                    } else {
                        format!("{n} rule(s) and calculated point(s) of `{id}` removed with it")
                    },
                    path: Json::Null,
                },
                Err(e) => Edited::text(Err(e)),
            }
        }
        "setDevice" => {
            let (keys, points) = device_form(ctx)?;
            let was = ctx.opt_string("deviceId")?;
            Edited::at(
                edit::set_device(text, was.as_deref(), &keys, points.as_deref()),
                "devices",
            )
        }
        _ => return Ok(None),
    }))
}

/// `setBus`, `removeBus`, `setRule`, `removeRule`, `setUpstream`; `None` for another op.
fn entry_op(ctx: &Ctx, op: &str, text: &str) -> Result<Option<Edited>, ServiceError> {
    Ok(Some(match op {
        "setBus" => Edited::at(
            edit::set_entry(
                text,
                Entries::Buses,
                ctx.opt_string("busName")?.as_deref(),
                &key_edits("bus", &ctx.value("bus")?)?,
            ),
            "buses",
        ),
        "setRule" => Edited::at(
            edit::set_entry(
                text,
                Entries::Rules,
                ctx.opt_string("ruleId")?.as_deref(),
                &key_edits("rule", &ctx.value("rule")?)?,
            ),
            "rules",
        ),
        "setCalculated" => Edited::at(
            edit::set_entry(
                text,
                Entries::Calculated,
                ctx.opt_string("calculatedId")?.as_deref(),
                &key_edits("calculated", &ctx.value("calculated")?)?,
            ),
            "calculated",
        ),
        "removeCalculated" => Edited::text(edit::remove_entry(
            text,
            Entries::Calculated,
            &ctx.string("calculatedId")?,
        )),
        "removeBus" => Edited::text(edit::remove_entry(
            text,
            Entries::Buses,
            &ctx.string("busName")?,
        )),
        "removeRule" => Edited::text(edit::remove_entry(
            text,
            Entries::Rules,
            &ctx.string("ruleId")?,
        )),
        "setUpstream" => {
            let section = ctx.string("section")?;
            if section != "mysql" && section != "mqtt" {
                return Err(ServiceError::bad_request("`section` must be mysql or mqtt"));
            }
            let keys = match ctx.value("keys") {
                Err(_) | Ok(Json::Null) => None,
                Ok(j) => Some(key_edits("keys", &j)?),
            };
            Edited::text(edit::set_section(text, &section, keys.as_deref()))
        }
        _ => return Ok(None),
    }))
}

/// A form's `{key: value-or-null}` as key edits: strings, numbers and booleans are set, null
/// removes the key.
fn key_edits(what: &str, j: &Json) -> Result<Vec<edit::KeyEdit>, ServiceError> {
    let Json::Object(m) = j else {
        return Err(ServiceError::bad_request(format!(
            "`{what}` must be an object"
        )));
    };
    m.iter()
        .map(|(k, v)| {
            let value = match v {
                Json::Null => None,
                Json::String(s) => Some(toml_edit::Value::from(s.as_str())),
                Json::Bool(b) => Some(toml_edit::Value::from(*b)),
                Json::Number(n) => Some(match n.as_i64() {
                    Some(i) => toml_edit::Value::from(i),
                    None => toml_edit::Value::from(n.as_f64().unwrap_or(f64::NAN)),
                }),
                _ => {
                    return Err(ServiceError::bad_request(format!(
                        "`{what}.{k}` must be a string, number, boolean or null"
                    )))
                }
            };
            Ok((k.clone(), value))
        })
        .collect()
}

/// `setDevice`'s `device` keys and `points` (`[{was?, set}]`; absent: the points stay).
fn device_form(ctx: &Ctx) -> Result<(Vec<edit::KeyEdit>, Option<Vec<PointEdit>>), ServiceError> {
    let keys = key_edits("device", &ctx.value("device")?)?;
    let points = match ctx.value("points") {
        Err(_) | Ok(Json::Null) => None,
        Ok(Json::Array(a)) => Some(
            a.iter()
                .map(|p| {
                    Ok(PointEdit {
                        was: p.get("was").and_then(Json::as_str).map(String::from),
                        keys: key_edits("points[].set", p.get("set").unwrap_or(&Json::Null))?,
                    })
                })
                .collect::<Result<Vec<_>, ServiceError>>()?,
        ),
        Ok(_) => return Err(ServiceError::bad_request("`points` must be a list")),
    };
    Ok((keys, points))
}
