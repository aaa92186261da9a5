//! The servers others read a gateway through, OPC UA and Modbus TCP: the one a reload carried
//! or a new one, what a gateway lends it, and committed alarms passed by OPC UA as events.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::handles::Handles;
use crate::events;

/// What the OPC UA server takes from a gateway.
pub(super) fn opcua_parts(handles: &Handles) -> crate::opcua::Parts {
    crate::opcua::Parts {
        auth: handles.auth.clone(),
        control: handles.control.clone(),
        metrics: handles.metrics.clone(),
    }
}

/// The OPC UA server a reload carried, or a new one on `listener`; none when `[opcua]` is
/// off or it could not be built (logged: the gateway runs on without it).
pub(super) fn start_opcua(
    handles: &Handles,
    carried: Option<crate::opcua::Server>,
    listener: Option<std::net::TcpListener>,
) -> Option<crate::opcua::Server> {
    carried.or_else(|| {
        let started =
            crate::opcua::Server::start(&handles.config, listener?, &opcua_parts(handles));
        started
            .inspect_err(|e| tracing::error!("the OPC UA server did not start: {e}"))
            .ok()
    })
}

/// Committed events pass by the OPC UA server (its alarms become OPC UA events) on their way
/// to the pushes.
pub(super) fn alarms_to_opcua(
    feed: Arc<crate::opcua::Feed>,
    gateway_id: String,
    mut committed: mpsc::Receiver<Vec<events::Event>>,
    tasks: &TaskTracker,
) -> mpsc::Receiver<Vec<events::Event>> {
    let (tx, rx) = mpsc::channel(events::processor::COMMITTED_CAPACITY);
    tasks.spawn(async move {
        while let Some(batch) = committed.recv().await {
            feed.events(&gateway_id, &batch);
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The Modbus TCP server a reload carried, or a new one on `listener`, answering from this
/// gateway (its live state, its mirrored raw words, its audited writes); none while off.
pub(super) fn start_modbus_server(
    handles: &Handles,
    carried: Option<crate::modbus_server::Server>,
    listener: Option<std::net::TcpListener>,
    images: &Arc<crate::modbus::image::Images>,
) -> Option<crate::modbus_server::Server> {
    let listen = handles.config.modbus_server.listen;
    let server = carried.or_else(|| {
        crate::modbus_server::Server::start(listener?, listen)
            .inspect_err(|e| tracing::error!("the Modbus TCP server did not start: {e}"))
            .ok()
    })?;
    server.attach(crate::modbus_server::Attached::new(
        handles.config.clone(),
        handles.control.clone(),
        images.clone(),
        handles.metrics.clone(),
    ));
    Some(server)
}
