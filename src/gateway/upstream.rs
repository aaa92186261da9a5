//! A gateway's upstream side: the sinks the config turns on, each with its own context, the
//! fleet's `state` the MQTT sink publishes and the signed requests it hears, and the alarm
//! notifiers.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handles::Handles;
use crate::config::versions::ConfigFile;
use crate::events::processor::OperatorEvents;
use crate::sinks;

/// What a sink is given: the narrow handles it uses, none of the HTTP side.
fn sink_context(
    handles: &Handles,
    status: &Arc<sinks::SinkStatus>,
    fleet_state: &watch::Receiver<Option<Arc<str>>>,
    fleet: Option<Arc<sinks::FleetPort>>,
    operator: Option<&OperatorEvents>,
    tasks: &TaskTracker,
) -> sinks::SinkContext {
    sinks::SinkContext {
        config: handles.config.clone(),
        store: handles.store.clone(),
        status: status.clone(),
        control: handles.control.clone(),
        fleet_state: fleet_state.clone(),
        fleet,
        operator: operator.cloned(),
        tasks: tasks.clone(),
    }
}

/// The upstream sinks the config turns on, each with its own context and stop token; with
/// MQTT, the fleet's `state` kept up to date for it and the fleet's `port` (signed requests,
/// served with the HTTP side) in its session.
pub(super) fn spawn_sinks(
    handles: &Handles,
    operator: Option<&OperatorEvents>,
    (port, config_file): (Option<Arc<sinks::FleetPort>>, Option<Arc<ConfigFile>>),
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    let (state_tx, state) = watch::channel(None);
    let h = handles;
    if h.config.mysql.is_some() {
        let context = sink_context(h, &h.sinks.mysql, &state, None, operator, tasks);
        tasks.spawn(sinks::mysql::run(context, cancel.child_token()));
    }
    if h.config.mqtt.is_some() {
        let sources = crate::fleet::state::Sources {
            config: h.config.clone(),
            live: h.live.clone(),
            store: h.store.clone(),
            sinks: h.sinks.clone(),
            config_file,
        };
        tasks.spawn(crate::fleet::publish_states(
            sources,
            state_tx,
            cancel.child_token(),
        ));
        let context = sink_context(h, &h.sinks.mqtt, &state, port, operator, tasks);
        tasks.spawn(sinks::mqtt::run(context, cancel.child_token()));
    }
    let ports = crate::notify::Ports {
        config: h.config.clone(),
        store: h.store.clone(),
        shelves: h.shelves.clone(),
        metrics: h.metrics.clone(),
    };
    crate::notify::start(&ports, tasks, cancel);
}
