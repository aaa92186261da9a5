//! Signed requests from the fleet over the broker, carried out: `rpc/request` for the read-only
//! services (answered on `rpc/response` as over WebSocket) and `config/apply` / `config/confirm`
//! (see `apply`), each checked (key, signature, target, expiry, an id not seen before) first.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::apply::{self, Trial};
use super::signed::{self, Seen};
use crate::api::context::{Ctx, Later, ServiceError};
use crate::api::Shared;
use crate::config::{Config, Role};
use crate::log_limit::{suppressed, LogLimit};
use crate::sinks::FleetPort;
use crate::ws::hub::{Client, Login};

/// What a fleet may ask over the broker: reads only (SPEC).
pub const READ_ONLY: [&str; 6] = [
    "system.diagnostics",
    "system.stats",
    "alarms.active",
    "events.query",
    "points.history",
    "system.log",
];

/// Signed messages waiting to be checked; past it they are dropped (a flood costs nothing).
const INBOUND: usize = 16;

/// The MQTT session's side of the fleet when `[fleet]` lists a key and there is a broker: the
/// port the sink is given, and the channels [`start`]'s task serves it through.
pub fn port(c: &Config) -> (Option<Arc<FleetPort>>, Option<Channels>) {
    if c.fleet.keys.is_empty() || c.mqtt.is_none() {
        return (None, None);
    }
    let (in_tx, in_rx) = mpsc::channel(INBOUND);
    let (out_tx, out_rx) = mpsc::channel(INBOUND);
    let topics = vec![
        c.fleet_topic("rpc/request"),
        c.fleet_topic("config/apply"),
        format!("{}/_all/config/apply", c.fleet_prefix()),
        c.fleet_topic("config/confirm"),
    ];
    let port = Arc::new(FleetPort {
        topics,
        inbound: in_tx,
        outbound: tokio::sync::Mutex::new(out_rx),
    });
    (Some(port), Some((in_rx, out_tx)))
}

/// The task that serves the fleet: signed messages from the MQTT session's [`port`], and a
/// remote config's trial carried on (when the gateway runs from a file). It answers through the
/// dashboard's services, so it starts with the HTTP side.
pub fn start(
    shared: &Arc<Shared>,
    trial: &Arc<Trial>,
    channels: Option<Channels>,
    tasks: &tokio_util::task::TaskTracker,
    cancel: &CancellationToken,
) {
    if channels.is_none() && shared.config_file.is_none() {
        return;
    }
    tasks.spawn(serve(
        shared.clone(),
        trial.clone(),
        channels,
        cancel.child_token(),
    ));
}

pub type Channels = (
    mpsc::Receiver<(String, Vec<u8>)>,
    mpsc::Sender<(String, Vec<u8>)>,
);

async fn serve(
    shared: Arc<Shared>,
    trial: Arc<Trial>,
    mut channels: Option<Channels>,
    cancel: CancellationToken,
) {
    let mut seen = Seen::load(&shared.config.gateway.data_dir);
    let mut changed = trial.watch();
    let result_topic = shared.config.fleet_topic("config/result");
    loop {
        let publish = channels.as_ref().map(|(_, answers)| {
            let answers = answers.clone();
            let topic = result_topic.clone();
            move |r: Json| {
                answers
                    .try_send((topic.clone(), r.to_string().into_bytes()))
                    .is_ok()
            }
        });
        apply::step(
            &shared,
            &trial,
            publish
                .as_ref()
                .map(|p| p as &(dyn Fn(Json) -> bool + Sync)),
        )
        .await;
        let due = trial.due();
        let message = tokio::select! {
            () = cancel.cancelled() => return,
            m = async { channels.as_mut()?.0.recv().await }, if channels.is_some() => match m {
                Some(m) => m,
                None => return,
            },
            r = changed.changed() => {
                if r.is_err() { return }
                continue;
            }
            () = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await }, if due.is_some() => continue,
        };
        let Some((_, answers)) = &channels else {
            continue;
        };
        let (topic_in, payload) = message;
        let answer = if topic_in.ends_with("/rpc/request") {
            Some(("rpc/response", rpc(&shared, &mut seen, &payload).await))
        } else if topic_in.ends_with("/config/apply") {
            config_apply(&shared, &trial, &mut seen, &payload)
                .await
                .err()
                .map(|r| ("config/result", r))
        } else {
            if let Err(why) = apply::confirm(&shared, &trial, &payload) {
                refused_log(&why);
            }
            None
        };
        if let Some((leaf, reply)) = answer {
            let topic = shared.config.fleet_topic(leaf);
            let _ = answers.send((topic, reply.to_string().into_bytes())).await;
        }
    }
}

/// Refused fleet messages: anyone on the broker can send them, so at most one line a minute
/// says so.
fn refused_log(why: &str) {
    static LOG: LazyLock<LogLimit<&'static str>> =
        LazyLock::new(|| LogLimit::new(Duration::from_secs(60)));
    if let Some(held) = LOG.allow("refused") {
        tracing::warn!("fleet message refused: {why}{}", suppressed(held));
    }
}

/// One `config/apply`, for this gateway or `_all`: refused (the result to publish) or under
/// way (its result published once its reload has run).
async fn config_apply(
    shared: &Arc<Shared>,
    trial: &Arc<Trial>,
    seen: &mut Seen,
    payload: &[u8],
) -> Result<(), Json> {
    let req: Json = serde_json::from_slice(payload).unwrap_or(Json::Null);
    let field = |k: &str| req[k].as_str().unwrap_or_default();
    let id = field("id");
    let confirm_s = match &req["confirmS"] {
        Json::Null => Some(0),
        v => v.as_u64(),
    };
    let checked = match confirm_s {
        Some(confirm_s) => check(shared, seen, &req, true, |target, expires| {
            signed::config_message(id, target, expires, confirm_s, field("text"))
        }),
        None => Err("`confirmS` must be a whole number of seconds".into()),
    };
    if let Err(why) = checked {
        refused_log(&why);
        return Err(apply::refused(id, &why, None));
    }
    apply::begin(shared, trial, &req, confirm_s.unwrap_or(0)).await
}

/// One `rpc/request`: `{"id","target","expires","service","params","keyId","sig"}`, `params`
/// the JSON text signed (an object, `"{}"` for none).
async fn rpc(shared: &Arc<Shared>, seen: &mut Seen, payload: &[u8]) -> Json {
    let req: Json = serde_json::from_slice(payload).unwrap_or(Json::Null);
    let id = req["id"].as_str().unwrap_or_default().to_string();
    let refused = |code: u16, why: String| {
        refused_log(&format!("rpc `{id}`: {why}"));
        json!({ "id": id, "code": code, "msg": why })
    };
    let field = |k: &str| req[k].as_str().unwrap_or_default();
    let (service, params) = (field("service"), field("params"));
    let key_id = field("keyId");
    let checked = check(shared, seen, &req, false, |target, expires| {
        signed::rpc_message(&id, target, expires, service, params)
    });
    if let Err(why) = checked {
        return refused(403, why);
    }
    if !READ_ONLY.contains(&service) {
        return refused(403, format!("`{service}` is not a read-only service"));
    }
    let text = if params.is_empty() { "{}" } else { params };
    let Ok(Json::Object(params)) = serde_json::from_str::<Json>(text) else {
        return refused(400, "`params` must be the text of a JSON object".into());
    };
    let client = Arc::new(Client::new(0, 1, crate::config::Overflow::DropOldest));
    *client
        .login
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Login {
        user: format!("fleet:{key_id}"),
        role: Role::Admin,
        token: String::new(),
    });
    let ctx = Ctx {
        shared: shared.clone(),
        client,
        remote: std::net::Ipv4Addr::UNSPECIFIED.into(),
        params,
        later: Later::default(),
    };
    let result: Result<Json, ServiceError> = crate::api::services::dispatch(service, ctx).await;
    let mut reply = crate::api::context::reply(&json!(id), Some(service), result);
    reply["id"] = json!(id);
    reply
}

/// The checks every signed message passes before anything is done: a known key and its
/// signature over `message(target, expires)`, this gateway the target (or every gateway, `_all`,
/// where `to_all`), not expired, an id not seen before (then remembered).
fn check(
    shared: &Shared,
    seen: &mut Seen,
    req: &Json,
    to_all: bool,
    message: impl Fn(&str, &str) -> String,
) -> Result<(), String> {
    let field = |k: &str| req[k].as_str().unwrap_or_default();
    let (id, target, expires) = (field("id"), field("target"), field("expires"));
    if id.is_empty() {
        return Err("no `id`".into());
    }
    signed::verify(
        &shared.config.fleet.keys,
        field("keyId"),
        &message(target, expires),
        field("sig"),
    )?;
    if target != shared.config.gateway.id && !(to_all && target == "_all") {
        return Err(format!("the target is `{target}`, not this gateway"));
    }
    let expires_ms = crate::model::parse_rfc3339(expires)
        .ok_or_else(|| format!("`expires` {expires:?} is not an RFC 3339 time"))?;
    let now = crate::model::now_ms();
    if expires_ms <= now {
        return Err(format!("expired at {expires}"));
    }
    seen.take(id, expires_ms, now)
}
