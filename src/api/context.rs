//! The request context: parses the envelope, hands handlers typed parameters, and turns their
//! results into uniform replies (`code`, `msg`, `data`).

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Map, Value as Json};

use super::Shared;
use crate::sync::Locked as _;
use crate::ws::hub::Client;

/// A handler's error: becomes the reply's `code` and `msg`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {msg}")]
pub struct ServiceError {
    pub code: u16,
    pub msg: String,
    /// Details beside the message (`config.apply`'s problems).
    pub data: Option<Json>,
}

impl ServiceError {
    pub fn new(code: u16, msg: impl Into<String>) -> Self {
        ServiceError {
            data: None,
            code,
            msg: msg.into(),
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(404, msg)
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(403, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, msg)
    }
}

pub type HandlerResult = Result<Json, ServiceError>;

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub request_id: Json,
    pub service: String,
    pub params: Map<String, Json>,
}

/// Parses a text frame into a request, or the 400 reply that says why not.
pub fn parse(text: &str) -> Result<Request, Json> {
    let v: Json = serde_json::from_str(text).map_err(|e| {
        reply(
            &Json::Null,
            None,
            Err(ServiceError::bad_request(format!("malformed JSON: {e}"))),
        )
    })?;
    let Json::Object(mut obj) = v else {
        return Err(reply(
            &Json::Null,
            None,
            Err(ServiceError::bad_request("a request is a JSON object")),
        ));
    };
    let request_id = obj.remove("requestId").unwrap_or(Json::Null);
    let service = match obj.remove("service") {
        Some(Json::String(s)) => s,
        Some(_) => {
            return Err(reply(
                &request_id,
                None,
                Err(ServiceError::bad_request("`service` must be a string")),
            ))
        }
        None => {
            return Err(reply(
                &request_id,
                None,
                Err(ServiceError::bad_request("missing `service`")),
            ))
        }
    };
    let params = match obj.remove("params") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(m)) => m,
        Some(_) => {
            return Err(reply(
                &request_id,
                Some(&service),
                Err(ServiceError::bad_request("`params` must be an object")),
            ));
        }
    };
    Ok(Request {
        request_id,
        service,
        params,
    })
}

/// The reply envelope: echoes `requestId` and `service`.
pub fn reply(request_id: &Json, service: Option<&str>, result: HandlerResult) -> Json {
    match result {
        Ok(data) => {
            json!({"requestId": request_id, "service": service, "code": 0, "msg": "ok", "data": data})
        }
        Err(ServiceError {
            code,
            msg,
            data: Some(data),
        }) => {
            json!({"requestId": request_id, "service": service, "code": code, "msg": msg, "data": data})
        }
        Err(e) => {
            json!({"requestId": request_id, "service": service, "code": e.code, "msg": e.msg})
        }
    }
}

/// What a handler gets: the gateway, its own connection, and typed access to the parameters.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub client: Arc<Client>,
    pub remote: IpAddr,
    pub params: Map<String, Json>,
    /// The way to answer after returning, for a handler whose answer outlives its gateway.
    pub later: Later,
}

/// A request's reply, for a handler that answers once its gateway is gone: `config.apply`
/// answers when the reload it asked for has run, and the connection meanwhile moves to the
/// next gateway (a handler still running then is cut off after a second). Empty outside a
/// connection (tests call handlers directly).
#[derive(Clone, Default)]
pub struct Later(Arc<std::sync::Mutex<Option<Deferred>>>);

/// A reply taken from its request, sent by [`Deferred::send`].
pub struct Deferred {
    request_id: Json,
    service: String,
    replies: tokio::sync::mpsc::Sender<crate::ws::writer::Out>,
}

impl Later {
    pub(super) fn to(
        request_id: Json,
        service: String,
        replies: tokio::sync::mpsc::Sender<crate::ws::writer::Out>,
    ) -> Later {
        Later(Arc::new(std::sync::Mutex::new(Some(Deferred {
            request_id,
            service,
            replies,
        }))))
    }

    /// Takes the reply: what the handler returns is then not sent.
    pub fn take(&self) -> Option<Deferred> {
        self.0.locked().take()
    }
}

impl Deferred {
    fn frame(&self, result: HandlerResult) -> crate::ws::writer::Out {
        let r = reply(&self.request_id, Some(&self.service), result);
        crate::ws::writer::Out::Text(r.to_string().into())
    }

    /// Sends the reply (into the connection's queue, which outlives a reload).
    pub async fn send(self, result: HandlerResult) {
        let _ = self.replies.send(self.frame(result)).await;
    }

    /// Queues the reply if there is room, without waiting (a client that does not read loses it).
    pub fn offer(self, result: HandlerResult) {
        let _ = self.replies.try_send(self.frame(result));
    }
}

fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

impl Ctx {
    fn get(&self, name: &str) -> Option<&Json> {
        self.params.get(name).filter(|v| !v.is_null())
    }

    fn mistyped(name: &str, want: &str, got: &Json) -> ServiceError {
        ServiceError::bad_request(format!(
            "param `{name}` must be {want}, not {}",
            type_name(got)
        ))
    }

    fn missing(name: &str) -> ServiceError {
        ServiceError::bad_request(format!("missing param `{name}`"))
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<String>, ServiceError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Self::mistyped(name, "a string", v)),
        }
    }

    /// A required string: missing or empty is 400 (SPEC), e.g. an empty `username`.
    pub fn string(&self, name: &str) -> Result<String, ServiceError> {
        match self.opt_string(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(ServiceError::bad_request(format!(
                "param `{name}` must not be empty"
            ))),
            None => Err(Self::missing(name)),
        }
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, ServiceError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| Self::mistyped(name, "an integer", v)),
        }
    }

    pub fn int(&self, name: &str) -> Result<i64, ServiceError> {
        self.opt_int(name)?.ok_or_else(|| Self::missing(name))
    }

    pub fn int_or(&self, name: &str, default: i64) -> Result<i64, ServiceError> {
        Ok(self.opt_int(name)?.unwrap_or(default))
    }

    pub fn opt_float(&self, name: &str) -> Result<Option<f64>, ServiceError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Self::mistyped(name, "a number", v)),
        }
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, ServiceError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::mistyped(name, "a boolean", v)),
        }
    }

    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, ServiceError> {
        Ok(self.opt_bool(name)?.unwrap_or(default))
    }

    pub fn opt_string_list(&self, name: &str) -> Result<Option<Vec<String>>, ServiceError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(String::from)
                        .ok_or_else(|| Self::mistyped(name, "a list of strings", i))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(Self::mistyped(name, "a list of strings", v)),
        }
    }

    /// Any JSON value, present.
    pub fn value(&self, name: &str) -> Result<Json, ServiceError> {
        self.get(name).cloned().ok_or_else(|| Self::missing(name))
    }

    /// A time given as RFC 3339 or as milliseconds since the epoch.
    pub fn opt_time(&self, name: &str) -> Result<Option<i64>, ServiceError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| Self::mistyped(name, "a time", &Json::Number(n.clone()))),
            Some(Json::String(s)) => crate::model::parse_rfc3339(s).map(Some).ok_or_else(|| {
                ServiceError::bad_request(format!("param `{name}`: `{s}` is not an RFC 3339 time"))
            }),
            Some(v) => Err(Self::mistyped(name, "an RFC 3339 time or milliseconds", v)),
        }
    }

    /// Device and point indexes by id, or 404 naming what is unknown.
    pub fn device(&self, id: &str) -> Result<usize, ServiceError> {
        self.shared
            .config
            .devices
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(|| ServiceError::not_found(format!("unknown device `{id}`")))
    }

    /// A bus index by name, or 404.
    pub fn bus(&self, name: &str) -> Result<usize, ServiceError> {
        self.shared
            .config
            .buses
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| ServiceError::not_found(format!("unknown bus `{name}`")))
    }

    pub fn point(&self, device: usize, id: &str) -> Result<usize, ServiceError> {
        let d = &self.shared.config.devices[device];
        d.points.iter().position(|p| p.id == id).ok_or_else(|| {
            ServiceError::not_found(format!("device `{}` has no point `{id}`", d.id))
        })
    }
}
