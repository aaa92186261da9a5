//! The config from the dashboard (admin): `config.get`, `config.validate`, `config.apply`,
//! `config.history`, `config.rollback`. Apply checks the text with the same validator as
//! `check-config`, writes the file atomically as given (comments and layout are the
//! technician's), keeps it as a version, and asks the daemon for the same reload as SIGHUP.

use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::api::context::{Ctx, HandlerResult, ServiceError};
use crate::api::Shared;
use crate::config::versions::{self, ConfigFile};
use crate::config::{self, Config, ConfigError, Link, Priority};
use crate::events::{Draft, EventState, EventType};
use crate::model::rfc3339;
use crate::sync::Locked as _;

/// The largest config text accepted (a frame is at most 64 KiB anyway).
const MAX_TEXT: usize = 64 * 1024;

pub(super) fn file(ctx: &Ctx) -> Result<Arc<ConfigFile>, ServiceError> {
    ctx.shared.config_file.clone().ok_or_else(no_file)
}

pub(super) fn no_file() -> ServiceError {
    ServiceError::new(
        503,
        "this gateway runs without a config file (the demo): nothing to edit",
    )
}

pub(super) fn problems_json(problems: &[config::Problem]) -> Json {
    Json::Array(
        problems
            .iter()
            .map(|p| json!({ "path": p.path, "line": p.line, "message": p.message }))
            .collect(),
    )
}

/// The problems of a config text (empty when valid) and, when valid, the config. A text may
/// not bring in the demo's well-known logins on a network address (`run` refuses those); the
/// demo itself, which runs with them, may keep them.
pub(super) fn check(text: &str, running: &Config) -> (Vec<config::Problem>, Option<Config>) {
    match config::parse(text) {
        Ok(l) => {
            let well_known = crate::config::preflight::well_known_login(&l.config)
                .filter(|_| crate::config::preflight::well_known_login(running).is_none());
            // Valid, but could it start here? A taken port or an unwritable directory is a
            // problem now, not an exit at the next start.
            let problems = match well_known {
                Some(why) => vec![config::Problem {
                    path: "users".into(),
                    line: None,
                    message: why,
                }],
                None => config::preflight::check(&l.config, running),
            };
            if problems.is_empty() {
                (problems, Some(l.config))
            } else {
                (problems, None)
            }
        }
        Err(ConfigError::Invalid(p)) => (p, None),
        Err(e @ ConfigError::Read { .. }) => (
            vec![config::Problem {
                path: String::new(),
                line: None,
                message: e.to_string(),
            }],
            None,
        ),
    }
}

fn text_param(ctx: &Ctx) -> Result<String, ServiceError> {
    let text = ctx.string("text")?;
    if text.len() > MAX_TEXT {
        return Err(ServiceError::bad_request("param `text` is over 64 KiB"));
    }
    Ok(text)
}

/// The running config's buses, devices (points as run, templates expanded) and rules.
fn structure(c: &Config) -> Json {
    let buses: Vec<Json> = c
        .buses
        .iter()
        .map(|b| {
            let (kind, at) = match &b.link {
                Link::Tcp { address } => ("tcp", address.clone()),
                Link::RtuOverTcp { address } => ("rtu_over_tcp", address.clone()),
                Link::Rtu { port, baud, .. } => ("rtu", format!("{port} @{baud}")),
            };
            json!({ "name": b.name, "kind": kind, "at": at })
        })
        .collect();
    let devices: Vec<Json> = c
        .devices
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "type": d.device_type,
                "bus": c.buses[d.bus].name,
                "unit": d.unit,
                "points": d.points.iter().map(|p| json!({
                    "id": p.id,
                    "table": p.format.table.to_string(),
                    "address": p.address,
                    "type": super::devices::word(p.format.data_type),
                    "unit": p.unit,
                    "writable": p.writable,
                    "calculated": p.calculated,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let rules: Vec<Json> = c
        .rules
        .iter()
        .map(|r| json!({ "id": r.id, "device": c.devices[r.device].id }))
        .collect();
    let calculated: Vec<Json> = (c.calculated.iter())
        .map(|k| {
            let d = &c.devices[k.device];
            let p = &d.points[k.point];
            json!({ "device": d.id, "point": p.id, "expr": k.formula.text, "unit": p.unit })
        })
        .collect();
    json!({ "buses": buses, "devices": devices, "rules": rules, "calculated": calculated })
}

/// `calc.preview` `{deviceId, expr}` (beyond SPEC, for the Configure view): the expression as a
/// calculated point of that device would be, from the current values: `{problems}` when it
/// does not compile, else `{value, quality, ts, error, type}`.
pub async fn preview(ctx: Ctx) -> HandlerResult {
    let d = ctx.device(&ctx.string("deviceId")?)?;
    let text = ctx.string("expr")?;
    let config = &ctx.shared.config;
    let formula = match crate::config::Names::new(&config.devices).formula(d, &text) {
        Ok(f) => f,
        Err(problems) => return Ok(json!({ "problems": problems })),
    };
    let live = crate::state::read(&ctx.shared.live);
    let (value, quality, ts, error) = crate::calc::evaluate_once(config, &live, &formula);
    Ok(json!({
        "problems": [],
        "value": value.as_ref().map(crate::model::Value::to_json),
        "quality": quality.as_str(),
        "ts": (ts > 0).then(|| crate::model::rfc3339(ts)),
        "error": error,
        "type": match formula.program.ty {
            crate::expr::Ty::Bool => "bool",
            crate::expr::Ty::Number => "number",
        },
    }))
}

/// `config.get`: the file's text as it is on disk, and the running config's structure.
pub async fn get(ctx: Ctx) -> HandlerResult {
    let f = file(&ctx)?;
    let text = std::fs::read_to_string(&f.path)
        .map_err(|e| ServiceError::new(503, format!("cannot read {}: {e}", f.path.display())))?;
    Ok(json!({
        "path": f.path.display().to_string(),
        "text": text,
        "config": structure(&ctx.shared.config),
        // The file as written (templates not expanded), for the device forms; null when the
        // file on disk is not TOML.
        "file": toml_edit::de::from_str::<Json>(&text).ok(),
        // For the bus form's port list (beyond SPEC).
        "serialPorts": serial_ports(),
    }))
}

/// The box's serial ports a bus may use: USB adapters, the Pi's UARTs, and their stable
/// `/dev/serial/by-id` names. (`/dev/ttyS*` are left out: a PC has 32 of them, mostly empty.)
fn serial_ports() -> Vec<String> {
    let list = |dir: &str, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| keep(n))
                    .map(|n| format!("{dir}/{n}"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let uart = |n: &str| {
        ["ttyUSB", "ttyACM", "ttyAMA", "ttymxc", "serial"]
            .iter()
            .any(|p| n.starts_with(p))
    };
    let mut ports = list("/dev", &uart);
    ports.extend(list("/dev/serial/by-id", &|_| true));
    ports.sort();
    ports
}

/// `config.validate`: the same checks as `check-config`, by key path and line.
pub async fn validate(ctx: Ctx) -> HandlerResult {
    let (problems, _) = check(&text_param(&ctx)?, &ctx.shared.config);
    Ok(json!({ "problems": problems_json(&problems) }))
}

/// `config.apply`: a valid text is written, kept as a version and applied as a reload.
pub async fn apply(ctx: Ctx) -> HandlerResult {
    let text = text_param(&ctx)?;
    apply_text(ctx, &text).await
}

/// Applies a text as the connection's user; the answer comes once the reload has run.
pub(super) async fn apply_text(ctx: Ctx, text: &str) -> HandlerResult {
    let user = ctx.client.login().map_or_else(String::new, |l| l.user);
    let applying = begin_apply(&ctx.shared, &user, "ws", text).await?;
    // The connection moves to the next gateway meanwhile: the answer must not hold this one.
    let later = ctx.later.take();
    drop(ctx);
    match later {
        Some(answer) => {
            tokio::spawn(async move { answer.send(applying.outcome().await).await });
            Ok(Json::Null)
        }
        None => applying.outcome().await,
    }
}

/// A config apply whose reload has been asked for: the version written, and the reload's
/// outcome to come (the apply lock held until then).
pub struct Applying {
    pub id: u64,
    pub summary: String,
    outcome: tokio::sync::oneshot::Receiver<Result<(), String>>,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl Applying {
    /// Ok with the version once the new config runs, else why not (the previous file is then
    /// back and running).
    pub async fn outcome(self) -> HandlerResult {
        let Applying {
            id,
            summary,
            outcome,
            _lock,
        } = self;
        match outcome
            .await
            .unwrap_or_else(|_| Err("the gateway stopped".into()))
        {
            Ok(()) => Ok(json!({ "id": id, "summary": summary })),
            Err(why) => Err(ServiceError::internal(format!(
                "version {id} was written but did not start ({why}); the previous config is back and runs"
            ))),
        }
    }
}

/// Checks a text, writes it, keeps it as a version and asks for the reload — the path of every
/// apply (dashboard, rollback, fleet) — recording a refusal in the audit table (who, from
/// where, why); the reload's own audit row is written with its outcome by the gateway then
/// running.
pub async fn begin_apply(
    shared: &Shared,
    user: &str,
    source: &str,
    text: &str,
) -> Result<Applying, ServiceError> {
    let f = shared.config_file.clone().ok_or_else(no_file)?;
    // One apply at a time, from its check until its reload has run: one version per text.
    // Another waits for nothing (the reload under way moves this connection): it is refused.
    let Ok(lock) = f.applying.clone().try_lock_owned() else {
        return Err(ServiceError::new(
            409,
            "another config apply is under way; send this one again once it is answered",
        ));
    };
    let (id, summary) = match write_version(shared, &f, user, text).await {
        Ok(v) => v,
        Err(e) => {
            let row = crate::store::Audit {
                ts: crate::model::now_ms(),
                user: user.to_string(),
                source: source.to_string(),
                device_id: shared.config.gateway.id.clone(),
                point_id: crate::store::AUDIT_CONFIG.into(),
                old: None,
                new: crate::model::Value::Text("not applied".into()),
                result: e.msg.clone(),
            };
            shared.store.send(crate::store::StoreCmd::Audit(row)).await;
            return Err(e);
        }
    };
    let (done, outcome) = tokio::sync::oneshot::channel();
    let ask = versions::ReloadAsk {
        user: user.to_string(),
        source: source.to_string(),
        what: format!("version {id}: {summary}"),
        done,
    };
    if f.reload.send(ask).await.is_err() {
        return Err(ServiceError::new(503, "the gateway is stopping"));
    }
    Ok(Applying {
        id,
        summary,
        outcome,
        _lock: lock,
    })
}

/// Checks and writes the text and keeps it as a version: its id and summary.
async fn write_version(
    shared: &Shared,
    f: &ConfigFile,
    user: &str,
    text: &str,
) -> Result<(u64, String), ServiceError> {
    let (problems, new) = check(text, &shared.config);
    let Some(new) = new else {
        let mut e = ServiceError::bad_request(format!(
            "the config has {} problem(s); nothing was written",
            problems.len()
        ));
        e.data = Some(json!({ "problems": problems_json(&problems) }));
        return Err(e);
    };
    let summary = versions::summary(&shared.config, &new);
    // What to put back should the reload fail after all (a race for the port).
    if let Ok(before) = std::fs::read_to_string(&f.path) {
        *f.previous.locked() = Some(before);
    }
    versions::write_atomically(&f.path, text.as_bytes()).map_err(|e| {
        ServiceError::new(
            503,
            format!("cannot write the config file ({e}); see docs/configuration.md, \"Editing from the dashboard\""),
        )
    })?;
    let v = f.versions.record(text, user, &summary).map_err(|e| {
        ServiceError::internal(format!(
            "the file was written, but its version was not kept: {e}"
        ))
    })?;
    tracing::info!(user, version = v.id, "config applied: {summary}");
    // In the event log, pushed and synced upstream like any operator action.
    if let Some(events) = shared.operator_events.as_ref() {
        let config = &shared.config;
        events
            .send(Draft {
                device: config.gateway_source(),
                point: None,
                kind: EventType::ConfigApplied,
                priority: Priority::Normal,
                value: None,
                message: format!("config applied by {user}: {summary} (version {})", v.id),
                state: EventState::Info,
                ts: crate::model::now_ms(),
                alarm: None,
                at: tokio::time::Instant::now(),
            })
            .await;
    }
    Ok((v.id, summary))
}

/// `config.history`: the last 20 applied versions, newest first.
pub async fn history(ctx: Ctx) -> HandlerResult {
    let f = file(&ctx)?;
    let list = f
        .versions
        .list()
        .map_err(|e| ServiceError::internal(format!("cannot list the versions: {e}")))?;
    let versions: Vec<Json> = list
        .iter()
        .map(|v| json!({ "id": v.id, "at": rfc3339(v.at), "user": v.user, "summary": v.summary }))
        .collect();
    Ok(json!({ "versions": versions }))
}

/// `config.rollback`: applies a kept version as `config.apply` would.
pub async fn rollback(ctx: Ctx) -> HandlerResult {
    let f = file(&ctx)?;
    let id = ctx.int("id")?;
    let text = u64::try_from(id)
        .ok()
        .and_then(|id| f.versions.text(id).ok())
        .ok_or_else(|| ServiceError::not_found(format!("no config version {id}")))?;
    apply_text(ctx, &text).await
}
