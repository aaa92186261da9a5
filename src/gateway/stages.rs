//! The stages a gateway starts from its handles (the pipeline with the event processor and
//! the pushes behind it, housekeeping), and last the HTTP side from `Shared`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handles::Handles;
use super::north::{alarms_to_opcua, opcua_parts};
use crate::api::push::Pusher;
use crate::api::Shared;
use crate::pipeline::Pipeline;
use crate::{api, events, http, modbus, store};

/// How often the store writer is made to take its write lock even with nothing to write, so
/// `/healthz` knows within seconds that a quiet gateway's store cannot write.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(1);

/// The store's write probe and the diagnostics' counter samples.
pub(super) fn spawn_housekeeping(h: &Handles, tasks: &TaskTracker, cancel: &CancellationToken) {
    tasks.spawn(
        h.store
            .clone()
            .probe(STORE_PROBE_EVERY, cancel.child_token()),
    );
    tasks.spawn(api::diagnostics::sampler(
        h.metrics.clone(),
        cancel.child_token(),
    ));
}

/// The pipeline (rules, live state, pushes, store), the event processor behind it, and the
/// pushes of committed events and of snapshots. Returns the processor's queues and the settle
/// channel, for tests that feed and wait on them.
pub(super) fn spawn_pipeline(
    h: &Handles,
    restored: &store::Restored,
    bus_events: mpsc::Receiver<modbus::bus::BusEvent>,
    opcua: Option<&crate::opcua::Server>,
    (tasks, field): (&TaskTracker, &super::Field),
    cancel: &CancellationToken,
) -> (events::processor::Queues, mpsc::Sender<oneshot::Sender<()>>) {
    let config = &h.config;
    // The OPC UA server first: the pipeline reports to it.
    let opcua = opcua.map(|s| s.attach(config, opcua_parts(h), &h.live, tasks, cancel));
    let engine =
        events::rules::Engine::new(config, &restored.active_alarms, tokio::time::Instant::now());
    let (queues, queue_rx) = events::processor::queues(h.metrics.clone());
    let push = Arc::new(Pusher::new(h.hub.clone(), config.clone(), h.live.clone()));
    let (settle, settle_rx) = mpsc::channel(events::processor::SETTLE_CAPACITY);
    let pipeline = Pipeline {
        config: config.clone(),
        live: h.live.clone(),
        metrics: h.metrics.clone(),
        store: h.store.clone(),
        telemetry: std::iter::once(push.clone() as Arc<dyn crate::state::Telemetry>)
            .chain(opcua.clone().map(|f| f as Arc<dyn crate::state::Telemetry>))
            .collect(),
        calc: crate::calc::Calculator::new(config),
        engine,
        queues: queues.clone(),
        settle: settle_rx,
    };
    field.spawn(tasks, pipeline.run(bus_events));
    let (committed, committed_rx) = mpsc::channel(events::processor::COMMITTED_CAPACITY);
    let processor = events::processor::Processor::new(
        config.clone(),
        h.metrics.clone(),
        h.store.clone(),
        committed,
        restored.last_seq,
        restored.device_seq.clone(),
    );
    tasks.spawn(processor.run(queue_rx));
    let committed_rx = match opcua {
        Some(feed) => alarms_to_opcua(feed, config.gateway.id.clone(), committed_rx, tasks),
        None => committed_rx,
    };
    tasks.spawn(api::push::committed_events(push.clone(), committed_rx));
    tasks.spawn(api::push::snapshot_ticker(
        push,
        h.push_interval.subscribe(),
        cancel.child_token(),
    ));
    (queues, settle)
}

/// What the HTTP side starts with `Shared`: the server, the session and shelf expiry sweeps,
/// the fleet's signed requests (answered through the dashboard's services), and the
/// WebSocket connections waiting through a reload moved here.
pub(super) fn spawn_http_side(
    shared: &Arc<Shared>,
    (listener, tls): (
        tokio::net::TcpListener,
        Option<Arc<crate::tls::server::ServerTls>>,
    ),
    fleet: (
        &Arc<crate::fleet::apply::Trial>,
        Option<crate::fleet::remote::Channels>,
    ),
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    tasks.spawn(http::serve(
        listener,
        shared.clone(),
        tls,
        cancel.child_token(),
    ));
    tasks.spawn(api::services::expire_sessions(
        shared.clone(),
        cancel.child_token(),
    ));
    tasks.spawn(api::services::expire_shelves(
        shared.clone(),
        cancel.child_token(),
    ));
    // With or without a broker: a remote config on trial is rolled back by whichever runs.
    crate::fleet::remote::start(shared, fleet.0, fleet.1, tasks, cancel);
    shared.front.serve(shared);
}
