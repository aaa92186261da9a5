//! A gateway's upstream side: the sinks the config turns on, each with its own context, the
//! fleet's `state` the MQTT sink publishes and the signed requests it hears, and the alarm
//! notifiers.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Shared;
use crate::sinks;

/// What a sink is given: the narrow handles it uses, none of the HTTP side.
fn sink_context(
    shared: &Shared,
    status: &Arc<sinks::SinkStatus>,
    fleet_state: &watch::Receiver<Option<Arc<str>>>,
    fleet: Option<Arc<sinks::FleetPort>>,
    tasks: &TaskTracker,
) -> sinks::SinkContext {
    sinks::SinkContext {
        config: shared.config.clone(),
        store: shared.store.clone(),
        status: status.clone(),
        control: shared.control.clone(),
        fleet_state: fleet_state.clone(),
        fleet,
        operator: shared.operator_events.get().cloned(),
        tasks: tasks.clone(),
    }
}

/// The upstream sinks the config turns on, each with its own context and stop token; with
/// MQTT, the fleet's `state` kept up to date for it and, with `[fleet]` keys, signed requests
/// served.
pub(super) fn spawn_sinks(
    shared: &Arc<Shared>,
    trial: &Arc<crate::fleet::apply::Trial>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    let (state_tx, state) = watch::channel(None);
    // With or without a broker: a remote config on trial is rolled back by whichever runs.
    let port = crate::fleet::remote::start(shared, trial, tasks, cancel);
    if shared.config.mysql.is_some() {
        tasks.spawn(sinks::mysql::run(
            sink_context(shared, &shared.sinks.mysql, &state, None, tasks),
            cancel.child_token(),
        ));
    }
    if shared.config.mqtt.is_some() {
        tasks.spawn(crate::fleet::publish_states(
            shared.clone(),
            state_tx,
            cancel.child_token(),
        ));
        tasks.spawn(sinks::mqtt::run(
            sink_context(shared, &shared.sinks.mqtt, &state, port, tasks),
            cancel.child_token(),
        ));
    }
    let ports = crate::notify::Ports {
        config: shared.config.clone(),
        store: shared.store.clone(),
        shelves: shared.shelves.clone(),
        metrics: shared.metrics.clone(),
    };
    crate::notify::start(&ports, tasks, cancel);
}
