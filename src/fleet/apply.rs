//! Remote config over the broker: a signed `config/apply` applied through the dashboard's apply
//! path, its result published on `config/result`, and with `confirmS` a trial that rolls itself
//! back unless a signed `config/confirm` arrives in time.
//!
//! The trial outlives the gateway that started it: the reload it asks for stops that gateway,
//! so the trial is carried into the next one (the new config, or the old one again when the new
//! could not start) and kept in `data_dir/fleet-trial` for a process that restarts meanwhile.
//! Whichever gateway runs holds the timer, rolls back, and publishes what is left to say.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::state::ConfigId;
use crate::api::services::configure;
use crate::api::Shared;
use crate::model::now_ms;

/// A rollback that could not start (another apply under way, the old config cannot start just
/// now) is tried again after this long.
const RETRY_MS: i64 = 5_000;

/// The remote config under way or on trial, shared by the gateways a reload hands it through.
pub struct Trial {
    path: PathBuf,
    record: watch::Sender<Option<Record>>,
    /// The record was read from the file at start: an `applying` or `rolling_back` stage then
    /// belongs to a process that is gone, and is settled by the file the gateway runs from.
    from_disk: AtomicBool,
}

/// A remote config's progress, as kept in `data_dir/fleet-trial`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    id: String,
    key_id: String,
    stage: Stage,
    confirm_s: u64,
    /// SHA-256 of the text applied, and the file it replaced (put back by a rollback).
    sha256: String,
    previous: String,
    /// When the trial ends unconfirmed (ms).
    deadline_ms: i64,
    /// What the next gateway with a broker publishes on `config/result`.
    result: Option<Json>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    Applying,
    Confirming,
    RollingBack,
    Settled,
}

impl Trial {
    /// The trial a process finds in `data_dir` at its start (none, mostly).
    pub fn load(data_dir: &Path) -> Arc<Trial> {
        let path = data_dir.join("fleet-trial");
        let record: Option<Record> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Arc::new(Trial {
            path,
            from_disk: AtomicBool::new(record.is_some()),
            record: watch::Sender::new(record),
        })
    }

    /// A receiver that wakes on each change.
    pub fn watch(&self) -> watch::Receiver<Option<Record>> {
        self.record.subscribe()
    }

    fn get(&self) -> Option<Record> {
        self.record.borrow().clone()
    }

    /// Changes the record and keeps it on disk (removed once nothing is left of it).
    fn set(&self, record: Option<Record>) {
        let record = record.filter(|r| r.stage != Stage::Settled || r.result.is_some());
        let kept = match &record {
            Some(r) => crate::config::versions::write_atomically(
                &self.path,
                &serde_json::to_vec(r).unwrap_or_default(),
            ),
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        if let Err(e) = kept {
            tracing::error!("fleet trial: cannot keep {}: {e}", self.path.display());
        }
        self.record.send_replace(record);
    }

    fn update(&self, f: impl FnOnce(&mut Record)) {
        if let Some(mut r) = self.get() {
            f(&mut r);
            self.set(Some(r));
        }
    }

    /// When the gateway must look again without being told (a trial's end), if ever.
    pub fn due(&self) -> Option<tokio::time::Instant> {
        let r = self.get()?;
        (r.stage == Stage::Confirming).then(|| {
            let left = u64::try_from(r.deadline_ms - now_ms()).unwrap_or(0);
            tokio::time::Instant::now() + std::time::Duration::from_millis(left)
        })
    }
}

fn result(id: &str, what: &str, more: Json) -> Json {
    let mut r = json!({ "id": id, "result": what });
    if let (Json::Object(r), Json::Object(more)) = (&mut r, more) {
        r.extend(more);
    }
    r
}

/// A `refused` result: the reason, and the config's problems when it had some.
pub fn refused(id: &str, reason: &str, problems: Option<Json>) -> Json {
    result(
        id,
        "refused",
        json!({ "reason": reason, "problems": problems.unwrap_or_else(|| json!([])) }),
    )
}

fn sha256(text: &str) -> String {
    super::hex(&Sha256::digest(text.as_bytes()))
}

/// A checked `config/apply` (key, signature, target and id already passed): refused at once
/// (the result to publish) or under way, its result then published by the gateway that runs
/// when its reload is done.
pub async fn begin(
    shared: &Shared,
    trial: &Arc<Trial>,
    req: &Json,
    confirm_s: u64,
) -> Result<(), Json> {
    let field = |k: &str| req[k].as_str().unwrap_or_default();
    let (id, key_id) = (field("id"), field("keyId"));
    if let Some(r) = trial.get().filter(|r| r.stage != Stage::Settled) {
        return Err(refused(
            id,
            &format!(
                "remote config `{}` is still {}; send this once it has settled",
                r.id,
                if r.stage == Stage::Confirming {
                    "waiting for its confirm"
                } else {
                    "being applied"
                }
            ),
            None,
        ));
    }
    let g = &shared.config.gateway;
    let (text, inserted) =
        own_identity(field("text"), &g.id, &g.data_dir).map_err(|why| refused(id, &why, None))?;
    let Some(file) = &shared.config_file else {
        return Err(refused(id, "this gateway runs without a config file", None));
    };
    let previous = std::fs::read_to_string(&file.path).map_err(|e| {
        refused(
            id,
            &format!("cannot read {}: {e}", file.path.display()),
            None,
        )
    })?;
    // Kept before anything is written: a crash from here on is settled at the next start.
    trial.set(Some(Record {
        id: id.to_string(),
        key_id: key_id.to_string(),
        stage: Stage::Applying,
        confirm_s,
        sha256: sha256(&text),
        previous,
        deadline_ms: 0,
        result: None,
    }));
    let user = format!("fleet:{key_id}");
    let applying = match configure::begin_apply(shared, &user, "fleet", &text).await {
        Ok(a) => a,
        Err(e) => {
            trial.set(None);
            let problems = e.data.map(|d| inserted.map_problems(d["problems"].clone()));
            return Err(refused(id, &e.msg, problems));
        }
    };
    let version = applying.id;
    let trial = trial.clone();
    // Not the gateway's task: the reload it waits for stops this gateway.
    tokio::spawn(async move {
        let outcome = applying.outcome().await;
        trial.update(|r| match outcome {
            Ok(_) if r.confirm_s > 0 => {
                r.stage = Stage::Confirming;
                r.deadline_ms =
                    now_ms() + i64::try_from(r.confirm_s).unwrap_or(i64::MAX / 2) * 1000;
                r.result = Some(result(&r.id, "applied", json!({ "version": version })));
            }
            Ok(_) => {
                r.stage = Stage::Settled;
                r.result = Some(result(&r.id, "applied", json!({ "version": version })));
            }
            Err(e) => {
                r.stage = Stage::Settled;
                r.result = Some(refused(&r.id, &e.msg, None));
            }
        });
    });
    Ok(())
}

/// A signed `config/confirm` `{"id","sig"}`: ends the trial of that id, which then stays.
pub fn confirm(shared: &Shared, trial: &Trial, payload: &[u8]) -> Result<(), String> {
    let req: Json = serde_json::from_slice(payload).unwrap_or(Json::Null);
    let id = req["id"].as_str().unwrap_or_default();
    let r = trial
        .get()
        .filter(|r| r.stage == Stage::Confirming && r.id == id)
        .ok_or_else(|| format!("no remote config `{id}` waits for a confirm"))?;
    super::signed::verify(
        &shared.config.fleet.keys,
        &r.key_id,
        &super::signed::confirm_message(id),
        req["sig"].as_str().unwrap_or_default(),
    )?;
    tracing::info!(id, "remote config confirmed: it stays");
    trial.update(|r| r.stage = Stage::Settled);
    Ok(())
}

/// What is due of the trial, done: a result published (through `publish`, when this gateway
/// has a broker), a trial ended unconfirmed rolled back, a record a stopped process left
/// settled.
pub async fn step(
    shared: &Shared,
    trial: &Arc<Trial>,
    publish: Option<&(dyn Fn(Json) -> bool + Sync)>,
) {
    let Some(r) = trial.get() else { return };
    if let (Some(res), Some(publish)) = (&r.result, publish) {
        if publish(res.clone()) {
            trial.update(|r| r.result = None);
        }
    }
    let from_disk = trial.from_disk.swap(false, Relaxed);
    let running = || {
        ConfigId::of(shared.config_file.as_deref())
            .sha256
            .unwrap_or_default()
    };
    match r.stage {
        Stage::Applying if from_disk => trial.update(|r| {
            if running() == r.sha256 {
                r.stage = if r.confirm_s > 0 {
                    Stage::Confirming
                } else {
                    Stage::Settled
                };
                r.deadline_ms = now_ms() + i64::try_from(r.confirm_s).unwrap_or(0) * 1000;
                let version = ConfigId::of(shared.config_file.as_deref()).version;
                r.result = Some(result(&r.id, "applied", json!({ "version": version })));
            } else {
                r.stage = Stage::Settled;
                r.result = Some(refused(
                    &r.id,
                    "the gateway stopped before the config ran",
                    None,
                ));
            }
        }),
        Stage::RollingBack if from_disk && running() == sha256(&r.previous) => {
            trial.update(|r| {
                r.stage = Stage::Settled;
                r.result = Some(rolled_back(
                    r,
                    ConfigId::of(shared.config_file.as_deref()).version,
                ));
            });
        }
        Stage::RollingBack if from_disk => roll_back(shared, trial, r).await,
        // Applied over since (from the dashboard, say): that text stays, nothing to undo.
        Stage::Confirming if r.deadline_ms <= now_ms() && running() != r.sha256 => {
            tracing::warn!(
                id = r.id,
                "remote config not confirmed, but the config was applied over since: it stays"
            );
            trial.update(|r| r.stage = Stage::Settled);
        }
        Stage::Confirming if r.deadline_ms <= now_ms() => roll_back(shared, trial, r).await,
        _ => {}
    }
}

fn rolled_back(r: &Record, version: Option<u64>) -> Json {
    result(
        &r.id,
        "rolled_back",
        json!({
            "reason": format!("not confirmed within {} s", r.confirm_s),
            "version": version,
        }),
    )
}

/// Puts the file of before the trial back, as an apply by the same key; tried again shortly
/// when it cannot start now.
async fn roll_back(shared: &Shared, trial: &Arc<Trial>, r: Record) {
    tracing::warn!(
        id = r.id,
        "remote config not confirmed within {} s: rolling back",
        r.confirm_s
    );
    trial.update(|r| r.stage = Stage::RollingBack);
    let user = format!("fleet:{}", r.key_id);
    match configure::begin_apply(shared, &user, "fleet", &r.previous).await {
        Ok(applying) => {
            let version = applying.id;
            let trial = trial.clone();
            tokio::spawn(async move {
                let outcome = applying.outcome().await;
                trial.update(|r| match outcome {
                    Ok(_) => {
                        r.stage = Stage::Settled;
                        r.result = Some(rolled_back(r, Some(version)));
                    }
                    Err(e) => {
                        tracing::error!(
                            id = r.id,
                            "rollback did not start: {}; trying again",
                            e.msg
                        );
                        r.stage = Stage::Confirming;
                        r.deadline_ms = now_ms() + RETRY_MS;
                    }
                });
            });
        }
        Err(e) => {
            tracing::error!(id = r.id, "rollback refused: {}; trying again", e.msg);
            trial.update(|r| {
                r.stage = Stage::Confirming;
                r.deadline_ms = now_ms() + RETRY_MS;
            });
        }
    }
}

/// Where the gateway's own id and `data_dir` went into a text that left them out: the line
/// after which, and how many lines, so the problems' lines can name the text as sent.
#[derive(Debug, Default, PartialEq)]
pub struct Inserted {
    after: usize,
    lines: usize,
}

impl Inserted {
    fn map_problems(&self, problems: Json) -> Json {
        let Json::Array(mut list) = problems else {
            return problems;
        };
        for p in &mut list {
            if let Some(line) = p["line"].as_u64().and_then(|l| usize::try_from(l).ok()) {
                let sent = if line > self.after + self.lines {
                    line - self.lines
                } else {
                    line.min(self.after)
                };
                p["line"] = json!(sent);
            }
        }
        Json::Array(list)
    }
}

/// The text as this gateway applies it: a `[gateway] id` must be this gateway's; left out, the
/// gateway's own id (and `data_dir`, when that is left out too) goes in, right under the
/// `[gateway]` header (or in a new table at the end), the rest of the text as it came.
fn own_identity(text: &str, id: &str, data_dir: &Path) -> Result<(String, Inserted), String> {
    let Ok(doc) = text.parse::<toml_edit::DocumentMut>() else {
        // Not TOML: the validator names where, by the text as sent.
        return Ok((text.to_string(), Inserted::default()));
    };
    let gateway = doc.get("gateway");
    match gateway.and_then(|g| g.get("id")) {
        Some(given) if given.as_str() == Some(id) => {}
        Some(given) => {
            return Err(format!(
                "the text is for gateway {}, not `{id}`",
                given
                    .as_str()
                    .map_or_else(|| given.to_string(), |s| format!("`{s}`"))
            ))
        }
        None => {}
    }
    let mut lines = Vec::new();
    if gateway.and_then(|g| g.get("id")).is_none() {
        lines.push(format!("id = {}", toml_edit::Value::from(id)));
    }
    if gateway.and_then(|g| g.get("data_dir")).is_none() {
        let dir = data_dir.display().to_string();
        lines.push(format!("data_dir = {}", toml_edit::Value::from(dir)));
    }
    if lines.is_empty() {
        return Ok((text.to_string(), Inserted::default()));
    }
    let header = text
        .lines()
        .position(|l| l.trim_start().starts_with("[gateway]"));
    let ins = lines.join("\n") + "\n";
    match (gateway, header) {
        (None, _) => {
            let sep = if text.is_empty() || text.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            Ok((
                format!("{text}{sep}\n[gateway]\n{ins}"),
                Inserted::default(),
            ))
        }
        (Some(_), Some(h)) => {
            let at: usize = text.split_inclusive('\n').take(h + 1).map(str::len).sum();
            let after = if text[..at].ends_with('\n') { "" } else { "\n" };
            let filled = format!("{}{after}{ins}{}", &text[..at], &text[at..]);
            Ok((
                filled,
                Inserted {
                    after: h + 1,
                    lines: lines.len(),
                },
            ))
        }
        // A dotted or inline `gateway`: edited as TOML (lines after it may shift).
        (Some(_), None) => {
            let mut doc = doc;
            doc["gateway"]["id"] = toml_edit::value(id);
            if doc["gateway"].get("data_dir").is_none() {
                doc["gateway"]["data_dir"] = toml_edit::value(data_dir.display().to_string());
            }
            Ok((doc.to_string(), Inserted::default()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_keeps_the_gateway_s_own_identity() {
        let dir = Path::new("/var/lib/gw");
        let (t, i) = own_identity("[gateway]\n# c\npoll = 1\n\n[http]\n", "gw-1", dir).unwrap();
        assert_eq!(
            t,
            "[gateway]\nid = \"gw-1\"\ndata_dir = \"/var/lib/gw\"\n# c\npoll = 1\n\n[http]\n"
        );
        // A problem on the text's line 5 (`[http]`) is on line 7 as applied, line 5 as sent.
        let p = i.map_problems(json!([{ "line": 7 }, { "line": 2 }, { "line": null }]));
        assert_eq!(p, json!([{ "line": 5 }, { "line": 1 }, { "line": null }]));
        let (t, _) = own_identity("[http]\nlisten = \"0.0.0.0:80\"", "gw-1", dir).unwrap();
        assert_eq!(t, "[http]\nlisten = \"0.0.0.0:80\"\n\n[gateway]\nid = \"gw-1\"\ndata_dir = \"/var/lib/gw\"\n");
        let same = "[gateway]\nid = \"gw-1\"\ndata_dir = \"/d\"\n";
        assert_eq!(own_identity(same, "gw-1", dir).unwrap().0, same);
        let err = own_identity("[gateway]\nid = \"gw-2\"\n", "gw-1", dir).unwrap_err();
        assert!(err.contains("`gw-2`"), "{err}");
        let (t, _) = own_identity("gateway.data_dir = \"/d\"\n", "gw-1", dir).unwrap();
        assert!(t.contains("id = \"gw-1\""), "{t}");
    }
}
