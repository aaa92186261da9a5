//! Signed requests from the fleet over the broker, carried out: `rpc/request` for the read-only
//! services, each checked (key, signature, target, expiry, an id not seen before) before it
//! runs, answered on `rpc/response` as over WebSocket.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::signed::{self, Seen};
use crate::config::Role;
use crate::log_limit::{suppressed, LogLimit};
use crate::sinks::FleetPort;
use crate::ws::context::{Ctx, Later, ServiceError};
use crate::ws::hub::{Client, Login};
use crate::ws::Shared;

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

/// The MQTT session's port and the task that serves it, when `[fleet]` lists a key and there
/// is a broker to hear from.
pub fn start(
    shared: &Arc<Shared>,
    tasks: &tokio_util::task::TaskTracker,
    cancel: &CancellationToken,
) -> Option<Arc<FleetPort>> {
    if shared.config.fleet.keys.is_empty() || shared.config.mqtt.is_none() {
        return None;
    }
    let (in_tx, in_rx) = mpsc::channel(INBOUND);
    let (out_tx, out_rx) = mpsc::channel(INBOUND);
    let port = Arc::new(FleetPort {
        topics: vec![shared.config.fleet_topic("rpc/request")],
        inbound: in_tx,
        outbound: tokio::sync::Mutex::new(out_rx),
    });
    tasks.spawn(serve(shared.clone(), in_rx, out_tx, cancel.child_token()));
    Some(port)
}

async fn serve(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<(String, Vec<u8>)>,
    answers: mpsc::Sender<(String, Vec<u8>)>,
    cancel: CancellationToken,
) {
    let mut seen = Seen::load(&shared.config.gateway.data_dir);
    loop {
        let (topic_in, payload) = tokio::select! {
            () = cancel.cancelled() => return,
            m = inbound.recv() => match m { Some(m) => m, None => return },
        };
        if topic_in.ends_with("/rpc/request") {
            let reply = rpc(&shared, &mut seen, &payload).await;
            let _ = answers
                .send((
                    shared.config.fleet_topic("rpc/response"),
                    reply.to_string().into_bytes(),
                ))
                .await;
        }
    }
}

/// One `rpc/request`: `{"id","target","expires","service","params","keyId","sig"}`, `params`
/// the JSON text signed (an object, `"{}"` for none).
async fn rpc(shared: &Arc<Shared>, seen: &mut Seen, payload: &[u8]) -> Json {
    let req: Json = serde_json::from_slice(payload).unwrap_or(Json::Null);
    let id = req["id"].as_str().unwrap_or_default().to_string();
    // Anyone on the broker can send these: at most one line a minute says so.
    static LOG: LazyLock<LogLimit<&'static str>> =
        LazyLock::new(|| LogLimit::new(Duration::from_secs(60)));
    let refused = |code: u16, why: String| {
        if let Some(held) = LOG.allow("refused") {
            tracing::warn!(id, "fleet rpc refused: {why}{}", suppressed(held));
        }
        json!({ "id": id, "code": code, "msg": why })
    };
    let field = |k: &str| req[k].as_str().unwrap_or_default();
    let (service, params) = (field("service"), field("params"));
    let key_id = field("keyId");
    let checked = check(shared, seen, &req, |target, expires| {
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
    let result: Result<Json, ServiceError> = crate::ws::services::dispatch(service, ctx).await;
    let mut reply = crate::ws::context::reply(&json!(id), Some(service), result);
    reply["id"] = json!(id);
    reply
}

/// The checks every signed message passes before anything is done: a known key and its
/// signature over `message(target, expires)`, this gateway the target, not expired, an id not
/// seen before (then remembered).
fn check(
    shared: &Shared,
    seen: &mut Seen,
    req: &Json,
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
    if target != shared.config.gateway.id {
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
