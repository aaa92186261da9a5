//! SPEC's JSON topics under `{prefix}/{gateway_id}/`: the retained `status` birth and last
//! will, a device's `status`, `telemetry` and `events`, and point writes from
//! `devices/{device}/write` and acknowledgements from `alarms/ack` when `allow_writes`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, QoS};
use serde_json::{json, Value as Json};

use super::{Format, Inbound, Publish, Tag, MAX_COMMAND_BYTES};
use crate::config::Mqtt;
use crate::control::Control;
use crate::events::ack::AckPort;
use crate::model::{now_ms, parse_rfc3339, rfc3339, Millis, Value};
use crate::sinks::feed::Batch;
use crate::sinks::{SinkContext, SinkStatus};
use crate::store::{self, OutboxRow};

/// The JSON format: its topics and whether writes are taken.
pub struct JsonTopics {
    topics: Topics,
    allow_writes: bool,
    status: Arc<SinkStatus>,
    ack: AckPort,
}

/// What comes in to be carried out in its turn.
pub enum Command {
    Write(WriteRequest),
    /// An acknowledgement's payload, and what acknowledging needs.
    Ack(AckPort, Vec<u8>),
}

/// Its answer: a write's on the device's `write/result`, an acknowledgement's on
/// `alarms/ack/result`.
pub enum Answer {
    Write(String, Json),
    Ack(Json),
}

/// A write request as it came in, to be carried out in its turn.
pub struct WriteRequest {
    device: String,
    payload: Vec<u8>,
    /// When it came in: its age when it carries no `ts` of its own.
    received: Millis,
}

impl JsonTopics {
    pub fn new(ctx: &SinkContext, cfg: &Mqtt) -> JsonTopics {
        JsonTopics {
            topics: Topics {
                base: format!("{}/{}", cfg.topic_prefix, ctx.config.gateway.id),
            },
            allow_writes: cfg.allow_writes,
            status: ctx.status.clone(),
            ack: AckPort {
                config: ctx.config.clone(),
                store: ctx.store.clone(),
                operator: ctx.operator.clone(),
            },
        }
    }
}

impl Format for JsonTopics {
    type Request = Command;
    type Reply = Answer;

    fn connect(&mut self) -> (LastWill, bool) {
        let will = LastWill::new(
            self.topics.status(),
            r#"{"online":false}"#,
            QoS::AtLeastOnce,
            true,
        );
        // A clean session: writes published while the gateway was away are not queued for it
        // and run at its next start (a setpoint of 50 became 555 after a restart), and a
        // message too large to read is not sent again on every reconnect.
        (will, true)
    }

    fn subscriptions(&self) -> (Vec<String>, Vec<String>) {
        // A persistent session of an older version may still hold the write subscription.
        let topics = vec![self.topics.writes(), self.topics.acks()];
        if self.allow_writes {
            (topics, Vec::new())
        } else {
            (Vec::new(), topics)
        }
    }

    fn start(&mut self, out: &mut Vec<Publish>) {
        out.push(self.status(true));
    }

    fn holding(&self) -> Option<String> {
        None
    }

    fn batch(&mut self, batch: &Batch, out: &mut Vec<Publish>) -> Vec<i64> {
        let tag = |ids: Vec<i64>| -> Tag { Some((batch.stream, ids)) };
        out.extend(messages(&self.topics, batch).into_iter().map(
            |(topic, payload, retain, id)| Publish {
                topic,
                payload,
                retain,
                qos: None,
                tag: tag(vec![id]),
            },
        ));
        // A sample without points (a damaged row) has no message.
        batch
            .rows
            .iter()
            .filter(|r| matches!(r, OutboxRow::Sample(t) if t.points.is_empty()))
            .map(OutboxRow::id)
            .collect()
    }

    fn incoming(
        &mut self,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<Publish>,
    ) -> Inbound<Self::Request> {
        if self.allow_writes && topic == self.topics.acks() {
            if payload.len() > MAX_COMMAND_BYTES {
                self.status.commands_ignored.fetch_add(1, Relaxed);
                let msg = format!(
                    "{} bytes refused unread: at most {MAX_COMMAND_BYTES}",
                    payload.len()
                );
                let body = super::ack::failed(&Json::Null, 413, msg);
                out.push(Publish::own(
                    self.topics.ack_result(),
                    body.to_string().into_bytes(),
                ));
                return Inbound::Nothing;
            }
            return Inbound::Serve(vec![Command::Ack(self.ack.clone(), payload.to_vec())]);
        }
        match self.topics.write_device(topic) {
            Some(device) if self.allow_writes && payload.len() > MAX_COMMAND_BYTES => {
                self.status.commands_ignored.fetch_add(1, Relaxed);
                let body = json!({"requestId": null, "deviceId": device, "code": 413,
                    "msg": format!("write of {} bytes refused unread: at most {MAX_COMMAND_BYTES}", payload.len())});
                out.push(Publish::own(
                    self.topics.device(device, "write/result"),
                    body.to_string().into_bytes(),
                ));
                Inbound::Nothing
            }
            Some(device) if self.allow_writes => {
                Inbound::Serve(vec![Command::Write(WriteRequest {
                    device: device.to_string(),
                    payload: payload.to_vec(),
                    received: now_ms(),
                })])
            }
            _ => Inbound::Nothing,
        }
    }

    async fn serve(control: Arc<Control>, r: Self::Request) -> Self::Reply {
        match r {
            Command::Write(r) => {
                let reply = write_point(&control, &r.device, &r.payload, r.received).await;
                Answer::Write(r.device, reply)
            }
            Command::Ack(port, payload) => Answer::Ack(super::ack::serve(&port, &payload).await),
        }
    }

    fn refused(r: Self::Request) -> Self::Reply {
        let payload = match &r {
            Command::Write(w) => &w.payload,
            Command::Ack(_, p) => p,
        };
        let request_id = serde_json::from_slice::<Json>(payload)
            .ok()
            .and_then(|j| j.get("requestId").cloned())
            .unwrap_or(Json::Null);
        let e = crate::modbus::bus::WriteError::Busy;
        match r {
            Command::Write(w) => Answer::Write(
                w.device.clone(),
                json!({"requestId": request_id, "deviceId": w.device, "code": e.code(), "msg": e.to_string()}),
            ),
            Command::Ack(..) => {
                Answer::Ack(super::ack::failed(&request_id, e.code(), e.to_string()))
            }
        }
    }

    fn reply(&mut self, answer: Self::Reply, out: &mut Vec<Publish>) {
        let (topic, body) = match answer {
            Answer::Write(device, body) => (self.topics.device(&device, "write/result"), body),
            Answer::Ack(body) => (self.topics.ack_result(), body),
        };
        out.push(Publish::own(topic, body.to_string().into_bytes()));
    }

    fn tick(&mut self, _out: &mut Vec<Publish>) {}

    fn stop(&mut self, out: &mut Vec<Publish>) {
        // A clean goodbye: the will is not sent on DISCONNECT, so say it ourselves.
        out.push(self.status(false));
    }
}

impl JsonTopics {
    fn status(&self, online: bool) -> Publish {
        Publish {
            topic: self.topics.status(),
            payload: format!(r#"{{"online":{online}}}"#).into_bytes(),
            retain: true,
            qos: None,
            tag: None,
        }
    }
}

/// The topics under `{prefix}/{gateway_id}/`.
struct Topics {
    base: String,
}

impl Topics {
    fn status(&self) -> String {
        format!("{}/status", self.base)
    }
    fn device(&self, device: &str, leaf: &str) -> String {
        format!("{}/devices/{device}/{leaf}", self.base)
    }
    fn writes(&self) -> String {
        self.device("+", "write")
    }
    fn acks(&self) -> String {
        format!("{}/alarms/ack", self.base)
    }
    fn ack_result(&self) -> String {
        format!("{}/alarms/ack/result", self.base)
    }
    /// The device of a `devices/{device}/write` topic.
    fn write_device<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(&self.base)?
            .strip_prefix("/devices/")?
            .strip_suffix("/write")
    }
}

/// `{"ts":…,"points":{"temperature":{"v":21.5,"q":"good"},…}}`, written straight into the
/// payload: a device sample per message is the sink's hot path (500 a second at full load),
/// where a `serde_json::Map` per message cost a tree of allocations.
fn telemetry_payload(t: &store::outbox::SampleRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + t.points.len() * 32);
    // Pieces pushed, not `write!`: formatting cost ~250 instructions a point (callgrind).
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(rfc3339(t.ts).as_bytes());
    out.extend_from_slice(b"\",\"points\":{");
    for (i, (point, value, quality)) in t.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(&mut out, point);
        out.extend_from_slice(b":{\"v\":");
        let _ = match value {
            None => serde_json::to_writer(&mut out, &()),
            Some(Value::Bool(b)) => serde_json::to_writer(&mut out, b),
            Some(Value::Int(v)) => serde_json::to_writer(&mut out, v),
            Some(Value::UInt(v)) => serde_json::to_writer(&mut out, v),
            // NaN and infinity have no JSON number: null, as `Value::to_json` gives.
            Some(Value::Float(v)) if v.is_finite() => serde_json::to_writer(&mut out, v),
            Some(Value::Float(_)) => serde_json::to_writer(&mut out, &()),
            Some(Value::Text(v)) => serde_json::to_writer(&mut out, v),
        };
        out.extend_from_slice(b",\"q\":\"");
        out.extend_from_slice(quality.as_str().as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"}}");
    out
}

/// A JSON string. A point id is nearly always plain text, written as it is; serde_json's
/// escaper, a look-up and a call for each run of bytes, was 1.5 % of the gateway's
/// instructions on the store bench (callgrind, session 30).
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(out, s);
    }
}

/// The messages of one outbox batch: one per event, one per status change, one per device
/// sample. A sample without points (a damaged row) has no message.
fn messages(topics: &Topics, batch: &Batch) -> Vec<(String, Vec<u8>, bool, i64)> {
    let time = |ms: Option<i64>| ms.map(rfc3339);
    batch
        .rows
        .iter()
        .filter_map(|row| {
            let (topic, body, retain) = match row {
                OutboxRow::Event(e) => (
                    topics.device(&e.device_id, "events"),
                    e.spec().to_json(),
                    false,
                ),
                OutboxRow::Status(s) => (
                    topics.device(&s.device_id, "status"),
                    json!({
                        "online": s.online,
                        "type": s.device_type,
                        "lastSeen": time(s.last_seen),
                        "ts": rfc3339(s.ts),
                    }),
                    true,
                ),
                OutboxRow::Sample(t) if t.points.is_empty() => return None,
                OutboxRow::Sample(t) => {
                    return Some((
                        topics.device(t.device_id(), "telemetry"),
                        telemetry_payload(t),
                        false,
                        t.id,
                    ))
                }
            };
            Some((topic, body.to_string().into_bytes(), retain, row.id()))
        })
        .collect()
}

/// When a write was sent, by its own `ts` (RFC 3339, or milliseconds since the epoch); `Err`
/// for a `ts` that is neither.
fn sent_at(req: &serde_json::Map<String, Json>) -> Result<Option<Millis>, String> {
    match req.get("ts") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| "param `ts` must be whole milliseconds since the epoch".into()),
        Some(Json::String(t)) => parse_rfc3339(t)
            .map(Some)
            .ok_or_else(|| format!("param `ts` `{t}` is not an RFC 3339 time")),
        Some(_) => Err("param `ts` must be an RFC 3339 string or milliseconds".into()),
    }
}

/// Serves one write request: `{"pointId", "value", "requestId"?, "ts"?}`; the reply carries
/// `code` and `msg` as a WebSocket reply would. A write older than `command_max_age_s` (by
/// its `ts`, else since `received`) is refused with 408, never run late.
async fn write_point(control: &Control, device: &str, payload: &[u8], received: Millis) -> Json {
    let req: Json = serde_json::from_slice(payload).unwrap_or(Json::Null);
    let request_id = req.get("requestId").cloned().unwrap_or(Json::Null);
    let reply = |code: u16, msg: String, extra: Json| {
        let mut r = json!({"requestId": request_id, "deviceId": device, "code": code, "msg": msg});
        if let (Some(r), Json::Object(e)) = (r.as_object_mut(), extra) {
            r.extend(e);
        }
        r
    };
    let Some(obj) = req.as_object() else {
        return reply(400, "payload must be a JSON object".into(), Json::Null);
    };
    let Some(point_id) = obj.get("pointId").and_then(Json::as_str) else {
        return reply(
            400,
            "param `pointId` missing or not a string".into(),
            Json::Null,
        );
    };
    let Some(raw) = obj.get("value") else {
        return reply(400, "param `value` missing".into(), Json::Null);
    };
    let Some(d) = control.config.devices.iter().position(|x| x.id == device) else {
        return reply(404, format!("unknown device `{device}`"), Json::Null);
    };
    let Some(p) = control.config.devices[d]
        .points
        .iter()
        .position(|x| x.id == point_id)
    else {
        return reply(404, format!("unknown point `{point_id}`"), Json::Null);
    };
    let value = match Value::from_json(raw) {
        Ok(v) => v,
        Err(e) => return reply(400, e.into(), Json::Null),
    };
    let sent = match sent_at(obj) {
        Ok(t) => t.unwrap_or(received),
        Err(e) => return reply(400, e, Json::Null),
    };
    let max_age = control
        .config
        .mqtt
        .as_ref()
        .map_or(Duration::from_secs(30), |m| m.command_max_age);
    match control
        .write_audited_until("mqtt", "mqtt", d, p, value.clone(), Some((sent, max_age)))
        .await
    {
        Ok(w) => reply(
            0,
            "ok".into(),
            json!({
                "pointId": point_id,
                "old": w.old.as_ref().map(Value::to_json),
                "value": value.to_json(),
                "readBack": w.read_back.as_ref().map(Value::to_json),
            }),
        ),
        Err(e) => reply(e.code(), e.to_string(), json!({"pointId": point_id})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_telemetry_payload_is_the_json_the_spec_shows() {
        use crate::model::Quality;
        let t = store::outbox::SampleRow::named(
            1,
            "boiler",
            1_700_000_000_123,
            vec![
                ("temperature", Some(Value::Float(71.5)), Quality::Good),
                ("on", Some(Value::Bool(true)), Quality::Good),
                ("energy", Some(Value::UInt(u64::MAX)), Quality::Stale),
                (
                    "name \"x\"",
                    Some(Value::Text("a\nb".into())),
                    Quality::Good,
                ),
                ("nan", Some(Value::Float(f64::NAN)), Quality::Bad),
                ("gone", None, Quality::Bad),
            ],
        );
        let got: Json = serde_json::from_slice(&telemetry_payload(&t)).unwrap();
        assert_eq!(
            got,
            json!({"ts": "2023-11-14T22:13:20.123Z", "points": {
                "temperature": {"v": 71.5, "q": "good"},
                "on": {"v": true, "q": "good"},
                "energy": {"v": u64::MAX, "q": "stale"},
                "name \"x\"": {"v": "a\nb", "q": "good"},
                "nan": {"v": null, "q": "bad"},
                "gone": {"v": null, "q": "bad"},
            }})
        );
    }

    #[test]
    fn write_topics() {
        let t = Topics {
            base: "edge/gw1".into(),
        };
        assert_eq!(t.writes(), "edge/gw1/devices/+/write");
        assert_eq!(
            t.write_device("edge/gw1/devices/pump-1/write"),
            Some("pump-1")
        );
        assert_eq!(t.write_device("edge/gw1/devices/pump-1/write/result"), None);
        assert_eq!(t.write_device("edge/gw2/devices/pump-1/write"), None);
    }
}
