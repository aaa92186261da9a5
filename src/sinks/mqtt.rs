//! The MQTT sink: publishes the outbox to the SPEC topics and moves each cursor only after the
//! broker confirmed the message (PUBACK for QoS 1, PUBCOMP for QoS 2); birth and last will on
//! `status`; point writes from `devices/{device}/write` when `allow_writes`.
//!
//! rumqttc keeps unconfirmed publishes only in memory, so a lost connection drops the client
//! and its event loop whole and the next connection resends from the persisted cursors: the
//! outbox, not the client, decides what is resent.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, ConnectReturnCode, Event, EventLoop, Incoming, LastWill, MqttOptions,
    Outgoing, QoS, TlsConfiguration, Transport,
};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::feed::{Batch, Feed};
use super::{SinkContext, SinkError, Upstream};
use crate::config::Mqtt;
use crate::control::Control;
use crate::model::event::SpecEvent;
use crate::model::{rfc3339, Value};
use crate::store::{self, OutboxRow};

pub const SINK: &str = "mqtt";

/// Outbox rows read ahead of the broker's confirmations: the publish window.
const WINDOW: usize = 4000;
/// Outbox rows read per stream and round.
const BATCH: usize = 500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect, from `mqtt[s]://[user[:password]@]host[:port]`.
#[derive(Debug, PartialEq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub credentials: Option<(String, String)>,
}

pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err("must start with mqtt:// or mqtts://".into());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (credentials, hostport) = match authority.rsplit_once('@') {
        Some((user, hp)) => {
            let (u, p) = user.split_once(':').unwrap_or((user, ""));
            (Some((u.to_string(), p.to_string())), hp)
        }
        None => (None, authority),
    };
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        match after.strip_prefix(':') {
            Some(p) => (h, p),
            None => (h, ""),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (hostport, ""),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = if port.is_empty() {
        default_port
    } else {
        port.parse().map_err(|_| format!("bad port `{port}`"))?
    };
    Ok(Target {
        host: host.to_string(),
        port,
        tls,
        credentials,
    })
}

/// TLS with the ring provider and the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` override
/// them, e.g. for a plant CA).
fn tls_config() -> Result<TlsConfiguration, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted CA certificates found for mqtts:// ({:?})",
            found.errors
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
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
    /// The device of a `devices/{device}/write` topic.
    fn write_device<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(&self.base)?
            .strip_prefix("/devices/")?
            .strip_suffix("/write")
    }
}

fn options(cfg: &Mqtt, target: &Target, topics: &Topics) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), target.host.clone(), target.port);
    o.set_keep_alive(Duration::from_secs(15))
        // A persistent session: the broker keeps our write subscription and queues writes.
        .set_clean_session(false)
        .set_last_will(LastWill::new(
            topics.status(),
            r#"{"online":false}"#,
            QoS::AtLeastOnce,
            true,
        ))
        .set_max_packet_size(256 * 1024, 1024 * 1024)
        .set_inflight(1000)
        // Never full: we hold at most WINDOW outbox messages plus a few of our own.
        .set_request_channel_capacity(WINDOW + 64);
    if let Some((u, p)) = &target.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    if target.tls {
        o.set_transport(Transport::tls_with_config(tls_config()?));
    }
    Ok(o)
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// `{"ts":…,"points":{"temperature":{"v":21.5,"q":"good"},…}}`, written straight into the
/// payload: a device sample per message is the sink's hot path (500 a second at full load),
/// where a `serde_json::Map` per message cost a tree of allocations.
fn telemetry_payload(t: &store::outbox::SampleRow) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(48 + t.points.len() * 32);
    let _ = write!(out, "{{\"ts\":\"{}\",\"points\":{{", rfc3339(t.ts));
    for (i, (point, value, quality)) in t.points.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, &**point);
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
        let _ = write!(out, ",\"q\":\"{}\"}}", quality.as_str());
    }
    out.extend_from_slice(b"}}");
    out
}

/// One message to publish and the outbox rows it confirms.
struct Message {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    rows: Vec<i64>,
}

/// The messages of one outbox batch: one per event, one per status change, one per device
/// sample. A sample without points (a damaged row) has no message.
fn messages(topics: &Topics, batch: &Batch) -> Vec<Message> {
    let time = |ms: Option<i64>| ms.map(rfc3339);
    batch
        .rows
        .iter()
        .filter_map(|row| {
            let (topic, body, retain) = match row {
                OutboxRow::Event(e) => (
                    topics.device(&e.device_id, "events"),
                    // Sent as it was raised; an acknowledgement follows as its own `info`
                    // event, which carries who and when.
                    SpecEvent {
                        id: &e.event_id,
                        device_id: &e.device_id,
                        point_id: e.point_id.as_deref(),
                        kind: &e.kind,
                        priority: &e.priority,
                        device_seq: e.device_seq,
                        value: e.value.as_ref(),
                        message: &e.message,
                        ts: e.ts,
                        state: &e.state,
                        acked_by: e.acked_by.as_deref(),
                        acked_at: e.acked_at,
                    }
                    .to_json(),
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
                    return Some(Message {
                        topic: topics.device(&t.device_id, "telemetry"),
                        payload: telemetry_payload(t),
                        retain: false,
                        rows: vec![t.id],
                    })
                }
            };
            Some(Message {
                topic,
                payload: body.to_string().into_bytes(),
                retain,
                rows: vec![row.id()],
            })
        })
        .collect()
}

/// The MQTT side of the sink loop: a new client and event loop for every session.
struct Broker {
    ctx: SinkContext,
    cfg: Mqtt,
    topics: Topics,
    opts: MqttOptions,
}

impl Upstream for Broker {
    async fn session(
        &mut self,
        feed: &mut Feed,
        reached: &mut bool,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        let mut session = Session {
            ctx: &self.ctx,
            cfg: &self.cfg,
            topics: &self.topics,
            feed,
            tags: VecDeque::new(),
            inflight: HashMap::new(),
            connected: false,
        };
        let (client, eventloop) = AsyncClient::new(self.opts.clone(), WINDOW + 64);
        let result = session.run(&client, eventloop, cancel).await;
        *reached = session.connected;
        result
    }
}

/// Runs the sink until cancelled (see [`super::run`]).
pub async fn run(ctx: SinkContext, cancel: CancellationToken) {
    let Some(cfg) = ctx.config.mqtt.clone() else {
        return;
    };
    let status = ctx.status.clone();
    let topics = Topics {
        base: format!("{}/{}", cfg.topic_prefix, ctx.config.gateway.id),
    };
    let opts = match parse_url(&cfg.url.0).and_then(|t| options(&cfg, &t, &topics)) {
        Ok(o) => o,
        Err(e) => {
            status.set_error(SINK, Some(format!("[mqtt] url: {e}")));
            return;
        }
    };
    let feed = match store::open_reader(&ctx.config.gateway.data_dir) {
        Ok(c) => Feed::new(SINK, c, ctx.config.clone(), BATCH),
        Err(e) => {
            status.set_error(SINK, Some(e.to_string()));
            return;
        }
    };
    let store = ctx.store.clone();
    let broker = Broker {
        ctx,
        cfg,
        topics,
        opts,
    };
    super::run(SINK, &status, &store, feed, broker, cancel).await;
}

/// The outbox rows a publish confirms: `None` for our own messages (birth, write results).
type Tag = Option<(store::Stream, Vec<i64>)>;

/// One connection's life.
struct Session<'a> {
    ctx: &'a SinkContext,
    cfg: &'a Mqtt,
    topics: &'a Topics,
    feed: &'a mut Feed,
    /// Tags of the publishes handed to the client, in order; the event loop reports each one
    /// as it goes out, in the same order, with its packet id.
    tags: VecDeque<Tag>,
    /// Sent, awaiting the broker's ack, by packet id.
    inflight: HashMap<u16, Tag>,
    connected: bool,
}

impl Session<'_> {
    async fn run(
        &mut self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        let status = &self.ctx.status;
        connack(&mut eventloop).await?;
        self.connected = true;
        status.set_error(SINK, None);
        // What the last connection left unconfirmed is read again from the cursors.
        self.ctx.store.flush().await;
        self.feed.reset().await?;
        self.publish(
            client,
            None,
            self.topics.status(),
            true,
            br#"{"online":true}"#.to_vec(),
        )?;
        // The session is persistent: a subscription from a run with `allow_writes` outlives it.
        let subscribed = if self.cfg.allow_writes {
            client.try_subscribe(self.topics.writes(), qos(self.cfg.qos))
        } else {
            client.try_unsubscribe(self.topics.writes())
        };
        subscribed.map_err(|_| SinkError::QueueClosed)?;
        let (results_tx, mut results) = mpsc::channel::<(String, Json)>(64);
        // When the outbox was last found empty, the next look is due then: a fixed instant, so
        // a steady trickle of broker packets cannot keep postponing it.
        let mut next_read = tokio::time::Instant::now();
        let mut last_backlog = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if self.feed.in_flight() < WINDOW / 2
                && now >= next_read
                && !self.send_next(client).await?
            {
                next_read = now + Duration::from_millis(100);
            }
            if last_backlog.elapsed() > Duration::from_millis(500) {
                last_backlog = tokio::time::Instant::now();
                self.feed.persist(&self.ctx.store).await;
                if let Ok(b) = self.feed.backlog().await {
                    status.backlog.store(b, Relaxed);
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    // A clean goodbye: the will is not sent on DISCONNECT, so say it ourselves.
                    let _ = self.publish(client, None, self.topics.status(), true,
                        br#"{"online":false}"#.to_vec());
                    let _ = client.try_disconnect();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
                        self.handle(ev);
                    }
                    return Ok(());
                }
                ev = eventloop.poll() => {
                    let ev = ev?;
                    if let Some(write) = self.handle(ev) {
                        let (control, tx) = (self.ctx.control.clone(), results_tx.clone());
                        tokio::spawn(async move {
                            let r = write_point(&control, &write.0, &write.1).await;
                            let _ = tx.send((write.0, r)).await;
                        });
                    }
                }
                Some((device, body)) = results.recv() => {
                    let topic = self.topics.device(&device, "write/result");
                    self.publish(client, None, topic, false, body.to_string().into_bytes())?;
                }
                // Nothing to send: look at the outbox again shortly.
                () = tokio::time::sleep_until(next_read), if next_read > tokio::time::Instant::now() => {}
            }
        }
    }

    /// Publishes what the feed gives next, each message tagged with its outbox rows. Returns
    /// false when the outbox had nothing new.
    async fn send_next(&mut self, client: &AsyncClient) -> Result<bool, SinkError> {
        let batches = self.feed.next().await?;
        for b in &batches {
            // Rows with nothing to say (damaged samples) are done at once.
            self.feed.confirm(
                b.stream,
                b.rows
                    .iter()
                    .filter(|r| matches!(r, OutboxRow::Sample(t) if t.points.is_empty()))
                    .map(OutboxRow::id),
            );
            for m in messages(self.topics, b) {
                let tag = Some((b.stream, m.rows));
                self.publish(client, tag, m.topic, m.retain, m.payload)?;
            }
        }
        Ok(!batches.is_empty())
    }

    fn publish(
        &mut self,
        client: &AsyncClient,
        tag: Tag,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), SinkError> {
        match client.try_publish(topic, qos(self.cfg.qos), retain, payload) {
            Ok(()) => {
                self.tags.push_back(tag);
                Ok(())
            }
            Err(ClientError::TryRequest(_) | ClientError::Request(_)) => {
                Err(SinkError::QueueClosed)
            }
        }
    }

    /// Tracks publishes to their acks; returns a write request (device, payload) to serve.
    fn handle(&mut self, ev: Event) -> Option<(String, Vec<u8>)> {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = self.tags.pop_front().flatten();
                if self.cfg.qos == 0 {
                    self.confirm(tag);
                } else {
                    self.inflight.insert(pkid, tag);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) if self.cfg.qos == 1 => {
                let tag = self.inflight.remove(&ack.pkid).flatten();
                self.confirm(tag);
            }
            Event::Incoming(Incoming::PubComp(ack)) if self.cfg.qos == 2 => {
                let tag = self.inflight.remove(&ack.pkid).flatten();
                self.confirm(tag);
            }
            Event::Incoming(Incoming::Publish(p)) if self.cfg.allow_writes => {
                if let Some(device) = self.topics.write_device(&p.topic) {
                    return Some((device.to_string(), p.payload.to_vec()));
                }
            }
            _ => {}
        }
        None
    }

    fn confirm(&mut self, tag: Tag) {
        if let Some((stream, rows)) = tag {
            self.ctx
                .status
                .rows_ok
                .fetch_add(rows.len() as u64, Relaxed);
            self.feed.confirm(stream, rows);
        }
    }
}

/// Serves one write request: `{"pointId", "value", "requestId"?}`; the reply carries `code`
/// and `msg` as a WebSocket reply would.
/// The first event of a connection: the broker's CONNACK, accepted, within [`CONNECT_TIMEOUT`].
async fn connack(eventloop: &mut EventLoop) -> Result<(), SinkError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => {
            if ack.code == ConnectReturnCode::Success {
                Ok(())
            } else {
                Err(SinkError::Refused(format!("{:?}", ack.code)))
            }
        }
        Ok(Ok(other)) => Err(SinkError::Unexpected(format!("{other:?}"))),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(SinkError::Timeout {
            what: "CONNACK",
            after: CONNECT_TIMEOUT,
        }),
    }
}

async fn write_point(control: &Control, device: &str, payload: &[u8]) -> Json {
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
    match control
        .write_audited("mqtt", "mqtt", d, p, value.clone())
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
mod tests;
