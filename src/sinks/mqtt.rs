//! The MQTT sink: publishes the outbox in one of two formats — SPEC's JSON topics
//! ([`json`]) or Sparkplug B ([`sparkplug`]) — and moves each cursor only after the broker
//! confirmed the message (PUBACK for QoS 1, PUBCOMP for QoS 2). What both share lives here: the
//! broker (see [`crate::broker`]), one connection's life, the publish window and the acks.
//!
//! rumqttc keeps unconfirmed publishes only in memory, so a lost connection drops the client
//! and its event loop whole and the next connection resends from the persisted cursors: the
//! outbox, not the client, decides what is resent.

mod ack;
mod json;
pub mod sparkplug;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, ConnectReturnCode, Event, EventLoop, Incoming, LastWill, MqttOptions,
    Outgoing, QoS, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::feed::{Batch, Feed};
use super::{SinkContext, SinkError, Upstream};
use crate::broker::{parse_url, tls_config, Target};
use crate::config::Mqtt;
use crate::control::Control;
use crate::store;

pub const SINK: &str = crate::metrics::sinks::MQTT;

/// Outbox rows read ahead of the broker's confirmations: the publish window.
const WINDOW: usize = 4000;
/// Outbox rows read per stream and round.
const BATCH: usize = 500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a format is given its [`Format::tick`].
const TICK: Duration = Duration::from_secs(1);
/// The largest command payload taken (a JSON write, a DCMD): anything larger is refused and
/// counted unread. A write is a few hundred bytes; 1,500 writes of 250 KB took RSS to 403 MB.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// The largest packet the client reads from the broker. Past it rumqttc ends the session, so
/// it is well above [`MAX_COMMAND_BYTES`]: a 300 KB write is refused by us, not a reconnect.
/// (Both formats' sessions are clean, so the broker does not send it again on reconnect.)
const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;
/// Commands waiting for their turn, carried out one at a time in the order received. Past
/// it a command is refused (429) rather than queued: bounded memory, and nothing runs late.
const COMMAND_QUEUE: usize = 64;

/// The outbox rows a publish confirms: `None` for a format's own messages (births, write
/// results).
pub type Tag = Option<(store::Stream, Vec<i64>)>;

/// One message for the broker.
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// The configured QoS unless a format's rule sets its own (Sparkplug's NDEATH: 1).
    pub qos: Option<QoS>,
    pub tag: Tag,
}

impl Publish {
    /// A message of the format's own, at the configured QoS, not retained.
    pub fn own(topic: String, payload: Vec<u8>) -> Publish {
        Publish {
            topic,
            payload,
            retain: false,
            qos: None,
            tag: None,
        }
    }
}

/// What a session does with a message that came in.
pub enum Inbound<R> {
    Nothing,
    /// Requests to serve off the session's task (writes); each answer comes back through
    /// [`Format::reply`].
    Serve(Vec<R>),
    /// The session must end, for this reason, once the messages given have gone out
    /// (Sparkplug: the primary host went offline).
    End(String),
}

/// What differs between the JSON topics and Sparkplug B: topics, payloads, and the format's
/// side of a session. Every method but [`Format::serve`] runs on the session's task and only
/// hands messages back; the session publishes them, in order.
pub trait Format: Send + 'static {
    type Request: Send + 'static;
    type Reply: Send + 'static;
    /// The last will of the next connection, and whether its session is clean. Called once
    /// per connection attempt, before it.
    fn connect(&mut self) -> (LastWill, bool);
    /// Topics to subscribe to and to unsubscribe from once connected.
    fn subscriptions(&self) -> (Vec<String>, Vec<String>);
    /// The first messages of a session.
    fn start(&mut self, out: &mut Vec<Publish>);
    /// Why the outbox is held (not read) now, if it is.
    fn holding(&self) -> Option<String>;
    /// The messages of one outbox batch; returns the rows done without a message.
    fn batch(&mut self, batch: &Batch, out: &mut Vec<Publish>) -> Vec<i64>;
    fn incoming(
        &mut self,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<Publish>,
    ) -> Inbound<Self::Request>;
    fn serve(
        control: Arc<Control>,
        request: Self::Request,
    ) -> impl Future<Output = Self::Reply> + Send;
    fn reply(&mut self, reply: Self::Reply, out: &mut Vec<Publish>);
    /// The reply to a request refused before its turn: the commands waiting are at their bound.
    fn refused(request: Self::Request) -> Self::Reply;
    /// Once a second, for messages of the format's own rhythm.
    fn tick(&mut self, out: &mut Vec<Publish>);
    /// The last messages of a clean stop, before DISCONNECT (which sends no will).
    fn stop(&mut self, out: &mut Vec<Publish>);
}

/// The client's request queue: the publish window, a Sparkplug birth set (a DBIRTH and maybe
/// a DDEATH per device), and a few more of a format's own. `try_publish` on a full queue would
/// end the session.
fn requests_capacity(devices: usize) -> usize {
    WINDOW + 64 + 2 * devices
}

fn options(
    cfg: &Mqtt,
    target: &Target,
    will: LastWill,
    clean: bool,
    capacity: usize,
) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.client_id.clone(), target.host.clone(), target.port);
    o.set_keep_alive(Duration::from_secs(15))
        .set_clean_session(clean)
        .set_last_will(will)
        .set_max_packet_size(MAX_INCOMING_PACKET, 1024 * 1024)
        .set_inflight(1000)
        .set_request_channel_capacity(capacity);
    if let Some((u, p)) = &target.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    o
}

pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// The MQTT side of the sink loop: a new client and event loop for every session.
struct Broker<F> {
    ctx: SinkContext,
    cfg: Mqtt,
    target: Target,
    /// Made once: loading the system's CA roots is not free.
    transport: Option<Transport>,
    format: F,
}

impl<F: Format> Upstream for Broker<F> {
    async fn session(
        &mut self,
        feed: &mut Feed,
        reached: &mut bool,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        let (will, clean) = self.format.connect();
        let capacity = requests_capacity(self.ctx.config.devices.len());
        let mut opts = options(&self.cfg, &self.target, will, clean, capacity);
        if let Some(t) = &self.transport {
            opts.set_transport(t.clone());
        }
        let mut session = Session {
            ctx: &self.ctx,
            qos: qos(self.cfg.qos),
            format: &mut self.format,
            feed,
            tags: VecDeque::new(),
            inflight: HashMap::new(),
            connected: false,
        };
        let (client, eventloop) = AsyncClient::new(opts, capacity);
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
    if cfg.sparkplug.is_some() {
        match sparkplug::Node::new(&ctx) {
            Ok(node) => serve(ctx, cfg, node, cancel).await,
            Err(e) => ctx.status.set_error(SINK, Some(e)),
        }
    } else {
        let format = json::JsonTopics::new(&ctx, &cfg);
        serve(ctx, cfg, format, cancel).await;
    }
}

async fn serve(ctx: SinkContext, cfg: Mqtt, format: impl Format, cancel: CancellationToken) {
    let status = ctx.status.clone();
    let target = match parse_url(&cfg.url.0) {
        Ok(t) => t,
        Err(e) => {
            status.set_error(SINK, Some(format!("[mqtt] url: {e}")));
            return;
        }
    };
    let transport = if target.tls {
        let identity = cfg
            .client_identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        match tls_config(identity) {
            Ok(t) => Some(Transport::tls_with_config(t)),
            Err(e) => {
                status.set_error(SINK, Some(format!("[mqtt] url: {e}")));
                return;
            }
        }
    } else {
        None
    };
    let feed = match store::open_reader(&ctx.config.gateway.data_dir) {
        Ok(c) => Feed::new(SINK, c, ctx.config.clone(), BATCH)
            .held_while(ctx.store.gone.clone())
            .with_tail(ctx.store.tail.clone()),
        Err(e) => {
            status.set_error(SINK, Some(e.to_string()));
            return;
        }
    };
    let store = ctx.store.clone();
    let broker = Broker {
        ctx,
        cfg,
        target,
        transport,
        format,
    };
    super::run(SINK, &status, &store, feed, broker, cancel).await;
}

/// One connection's life.
struct Session<'a, F> {
    ctx: &'a SinkContext,
    qos: QoS,
    format: &'a mut F,
    feed: &'a mut Feed,
    /// Tags of the publishes handed to the client, in order; the event loop reports each one
    /// as it goes out, in the same order, with its packet id.
    tags: VecDeque<Tag>,
    /// Sent, awaiting the broker's ack, by packet id.
    inflight: HashMap<u16, Tag>,
    connected: bool,
}

impl<F: Format> Session<'_, F> {
    async fn run(
        &mut self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        let status = &self.ctx.status;
        connack(&mut eventloop).await?;
        self.connected = true;
        // What the last connection left unconfirmed is read again from the cursors.
        self.ctx.store.flush().await;
        self.feed.reset().await?;
        self.subscribe(client)?;
        let mut out = Vec::new();
        self.format.start(&mut out);
        // The fleet's retained state: the newest at once, then each new one; and the answers
        // to signed fleet messages.
        let mut fleet = self.ctx.fleet_state.clone();
        self.fleet_state(fleet.borrow_and_update().clone(), &mut out);
        let ctx = self.ctx;
        let mut answers = match &ctx.fleet {
            Some(p) => Some(p.outbound.lock().await),
            None => None,
        };
        self.send(client, &mut out)?;
        status.set_error(SINK, self.format.holding());
        let (replies_tx, mut replies) = mpsc::channel::<F::Reply>(COMMAND_QUEUE);
        // One worker per session carries commands out one at a time, in the order they came:
        // a task per message raced for the bus, and 378 of 3,000 writes to one point landed
        // after a later one. It ends once the session drops the sender; a stop waits for it
        // (the gateway's tasks), so a write under way is finished and audited.
        let (commands, queue) = mpsc::channel::<F::Request>(COMMAND_QUEUE);
        self.ctx.tasks.spawn(serve_in_order::<F>(
            self.ctx.control.clone(),
            queue,
            replies_tx,
        ));
        // When the outbox was last found empty, the next look is due then: a fixed instant, so
        // a steady trickle of broker packets cannot keep postponing it.
        let mut next_read = tokio::time::Instant::now();
        let mut last_backlog = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = tokio::time::Instant::now();
            if self.feed.in_flight() < WINDOW / 2
                && now >= next_read
                && self.format.holding().is_none()
                && !self.send_next(client).await?
            {
                next_read = now + Duration::from_millis(100);
            }
            if last_backlog.elapsed() > Duration::from_millis(500) {
                last_backlog = tokio::time::Instant::now();
                self.persist().await;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    self.format.stop(&mut out);
                    self.goodbye(client, &mut eventloop, &mut out).await;
                    return Ok(());
                }
                ev = eventloop.poll() => {
                    let Some((topic, payload)) = self.handle(ev?) else { continue };
                    if let Some(why) = self.take(topic, payload, &commands, &mut out) {
                        self.goodbye(client, &mut eventloop, &mut out).await;
                        return Err(SinkError::Held(why));
                    }
                    self.send(client, &mut out)?;
                    status.set_error(SINK, self.format.holding());
                }
                Some(reply) = replies.recv() => {
                    self.format.reply(reply, &mut out);
                    self.send(client, &mut out)?;
                }
                _ = tick.tick() => {
                    self.format.tick(&mut out);
                    self.send(client, &mut out)?;
                }
                Ok(()) = fleet.changed() => {
                    self.fleet_state(fleet.borrow_and_update().clone(), &mut out);
                    self.send(client, &mut out)?;
                }
                Some((topic, payload)) = async { answers.as_mut()?.recv().await }, if answers.is_some() => {
                    out.push(Publish { qos: Some(QoS::AtLeastOnce), ..Publish::own(topic, payload) });
                    self.send(client, &mut out)?;
                }
                // Nothing to send: look at the outbox again shortly.
                () = tokio::time::sleep_until(next_read), if next_read > tokio::time::Instant::now() => {}
            }
        }
    }

    /// The cursors kept, and the backlog shown.
    async fn persist(&mut self) {
        self.feed.persist(&self.ctx.store).await;
        if let Ok(b) = self.feed.backlog().await {
            self.ctx.status.backlog.store(b, Relaxed);
        }
    }

    /// A message from the broker: a fleet message handed on, else the format's to take (its
    /// requests queued for the worker, or refused past the queue's bound). The reason the
    /// session must end, when it must.
    fn take(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        commands: &mpsc::Sender<F::Request>,
        out: &mut Vec<Publish>,
    ) -> Option<String> {
        if let Some(p) = self
            .ctx
            .fleet
            .as_ref()
            .filter(|p| p.topics.contains(&topic))
        {
            let _ = p.inbound.try_send((topic, payload));
            return None;
        }
        match self.format.incoming(&topic, &payload, out) {
            Inbound::Nothing => None,
            Inbound::Serve(requests) => {
                for request in requests {
                    if let Err(e) = commands.try_send(request) {
                        let (mpsc::error::TrySendError::Full(r)
                        | mpsc::error::TrySendError::Closed(r)) = e;
                        self.format.reply(F::refused(r), out);
                    }
                }
                None
            }
            Inbound::End(why) => Some(why),
        }
    }

    /// `{topic_prefix}/{gateway_id}/state`, retained at QoS 1 (SPEC "Fleet over the broker").
    fn fleet_state(&self, state: Option<Arc<str>>, out: &mut Vec<Publish>) {
        if let Some(state) = state {
            out.push(Publish {
                topic: self.ctx.config.fleet_topic("state"),
                payload: state.as_bytes().to_vec(),
                retain: true,
                qos: Some(QoS::AtLeastOnce),
                tag: None,
            });
        }
    }

    fn subscribe(&self, client: &AsyncClient) -> Result<(), SinkError> {
        let (mut subscribe, unsubscribe) = self.format.subscriptions();
        if let Some(port) = &self.ctx.fleet {
            subscribe.extend(port.topics.iter().cloned());
        }
        for topic in subscribe {
            client
                .try_subscribe(topic, self.qos)
                .map_err(|_| SinkError::QueueClosed)?;
        }
        for topic in unsubscribe {
            client
                .try_unsubscribe(topic)
                .map_err(|_| SinkError::QueueClosed)?;
        }
        Ok(())
    }

    /// Publishes the last messages, disconnects, and lets the event loop carry them out (2 s
    /// at most).
    async fn goodbye(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        out: &mut Vec<Publish>,
    ) {
        let _ = self.send(client, out);
        let _ = client.try_disconnect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
            self.handle(ev);
        }
    }

    /// Publishes what the feed gives next, each message tagged with its outbox rows. Returns
    /// false when the outbox had nothing new.
    async fn send_next(&mut self, client: &AsyncClient) -> Result<bool, SinkError> {
        let batches = self.feed.next().await?;
        let mut out = Vec::new();
        for b in &batches {
            // Rows with nothing to say are done at once.
            let done = self.format.batch(b, &mut out);
            self.feed.confirm(b.stream, done);
            self.send(client, &mut out)?;
        }
        Ok(!batches.is_empty())
    }

    /// Hands the messages to the client, in order, emptying `out`.
    fn send(&mut self, client: &AsyncClient, out: &mut Vec<Publish>) -> Result<(), SinkError> {
        for m in out.drain(..) {
            match client.try_publish(m.topic, m.qos.unwrap_or(self.qos), m.retain, m.payload) {
                Ok(()) => self.tags.push_back(m.tag),
                Err(ClientError::TryRequest(_) | ClientError::Request(_)) => {
                    return Err(SinkError::QueueClosed)
                }
            }
        }
        Ok(())
    }

    /// Tracks publishes to their acks; returns a message that came in (topic, payload).
    fn handle(&mut self, ev: Event) -> Option<(String, Vec<u8>)> {
        match ev {
            // A QoS 0 publish is done once it is out; the others wait for their ack.
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = self.tags.pop_front().flatten();
                if pkid == 0 {
                    self.confirm(tag);
                } else {
                    self.inflight.insert(pkid, tag);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                let tag = self.inflight.remove(&ack.pkid).flatten();
                self.confirm(tag);
            }
            Event::Incoming(Incoming::PubComp(ack)) => {
                let tag = self.inflight.remove(&ack.pkid).flatten();
                self.confirm(tag);
            }
            Event::Incoming(Incoming::Publish(p)) => return Some((p.topic, p.payload.to_vec())),
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

/// Carries a session's commands out one at a time, in the order received, each answer back to
/// the session.
async fn serve_in_order<F: Format>(
    control: Arc<Control>,
    mut queue: mpsc::Receiver<F::Request>,
    replies: mpsc::Sender<F::Reply>,
) {
    while let Some(request) = queue.recv().await {
        let reply = F::serve(control.clone(), request).await;
        if replies.send(reply).await.is_err() {
            return;
        }
    }
}

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
