//! The gateway's node manager: its address space kept in memory (reads and subscriptions are
//! the library's; a read's points are first brought up to the live state), and writes that go
//! the audited, strict path of `device.write` of the gateway now running (a reload attaches
//! the next one; the server and its sessions stay).

use std::collections::HashSet;
use std::sync::Arc;

use ua::server::address_space::AddressSpace;
use ua::server::diagnostics::NamespaceMetadata;
use ua::server::node_manager::memory::{InMemoryNodeManagerBuilder, InMemoryNodeManagerImpl};
use ua::server::node_manager::{
    MonitoredItemRef, NodeManagerBuilder, ParsedReadValueId, RequestContext, ServerContext,
    WriteNode,
};
use ua::server::CreateMonitoredItem;
use ua::sync::RwLock;
use ua::types::{
    AttributeId, DataValue, NodeId, NumericRange, StatusCode, TimestampsToReturn, Variant,
};

use super::space::{Kind, Space};
use crate::config::{Config, Role};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::modbus::bus::WriteError;
use crate::modbus::codec::CodecError;
use crate::model::Value;
use crate::state::SharedLive;

/// A writable point behind a variable.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub device: usize,
    pub point: usize,
    pub kind: Kind,
}

/// What a running gateway lends the node manager: its write path, its counters, who may
/// write, its points (which are writable) and the live state their values are read from.
pub struct Attached {
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    /// Users who may write (`admin`), by name.
    pub admins: HashSet<String>,
    pub space: Arc<Space>,
    pub live: SharedLive,
}

impl Attached {
    /// The admins of `config`.
    pub fn admins(config: &Config) -> HashSet<String> {
        config
            .users
            .iter()
            .filter(|u| u.role == Role::Admin)
            .map(|u| u.name.clone())
            .collect()
    }
}

pub struct GatewayNodes {
    namespaces: Vec<NamespaceMetadata>,
    /// `None` between a gateway's stop and the next one's start: what it lent (its store,
    /// above all) must not outlive it.
    attached: std::sync::RwLock<Option<Arc<Attached>>>,
    /// The sessions seen making requests here, for the Diagnostics view.
    pub sessions: super::sessions::Sessions,
}

impl GatewayNodes {
    /// The node manager for `namespace`; the gateway starting attaches itself.
    pub fn builder(namespace: String) -> impl NodeManagerBuilder {
        InMemoryNodeManagerBuilder::new(move |context: ServerContext, space: &mut AddressSpace| {
            let index = context
                .type_tree
                .write()
                .namespaces_mut()
                .add_namespace(&namespace);
            space.add_namespace(&namespace, index);
            GatewayNodes {
                namespaces: vec![NamespaceMetadata {
                    namespace_uri: namespace,
                    namespace_index: index,
                    ..Default::default()
                }],
                attached: std::sync::RwLock::new(None),
                sessions: super::sessions::Sessions::default(),
            }
        })
    }

    /// The gateway now running: its writes, counters, admins and writable points.
    pub fn attach(&self, attached: Option<Attached>) {
        *self
            .attached
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = attached.map(Arc::new);
    }

    fn attached(&self) -> Option<Arc<Attached>> {
        self.attached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The points among `ids` brought up to the running gateway's live state.
    fn refresh<'a>(&self, space: &RwLock<AddressSpace>, ids: impl Iterator<Item = &'a NodeId>) {
        if let Some(a) = self.attached() {
            a.space.refresh(space, &a.live, ids);
        }
    }

    /// One request of `service` on the gateway's nodes, in the running gateway's counters.
    fn count(&self, service: &'static str, result: &str) {
        if let Some(a) = self.attached() {
            a.metrics.opcua.count(service, result);
        }
    }

    /// One write, in its turn: the SPEC status codes, the device written only when each check
    /// passed.
    async fn write_one(&self, context: &RequestContext, write: &WriteNode) -> StatusCode {
        let v = write.value();
        if v.attribute_id != AttributeId::Value {
            return StatusCode::BadNotWritable;
        }
        // Between two gateways of a reload (a moment): nothing to write with.
        let Some(a) = self.attached() else {
            return StatusCode::BadResourceUnavailable;
        };
        let Some(t) = a.space.target(&v.node_id) else {
            return StatusCode::BadNotWritable;
        };
        let user = &context.token.0;
        if !a.admins.contains(user) {
            return StatusCode::BadUserAccessDenied;
        }
        if v.index_range != NumericRange::None {
            return StatusCode::BadWriteNotSupported;
        }
        let value = match v.value.value.as_ref().map(|x| value_of(t.kind, x)) {
            Some(Ok(value)) => value,
            Some(Err(status)) => return status,
            None => return StatusCode::BadTypeMismatch,
        };
        // Who wrote, as the audit shows it: the library tells no peer address, so the client
        // application's URI stands beside the user.
        let client = context
            .session
            .read()
            .application_description()
            .application_uri
            .to_string();
        let who = format!("opcua:{user}@{client}");
        match a
            .control
            .write_audited(&who, "opcua", t.device, t.point, value)
            .await
        {
            Ok(_) => StatusCode::Good,
            Err(e) => status_of(&e),
        }
    }
}

#[async_trait::async_trait]
impl InMemoryNodeManagerImpl for GatewayNodes {
    async fn init(&self, _space: &mut AddressSpace, _context: ServerContext) {}

    fn name(&self) -> &'static str {
        "edge-gateway"
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        self.namespaces.clone()
    }

    /// Each write in the order given, none holding the address space while its device
    /// answers (a slow unit must not hold the values other clients read).
    async fn write(
        &self,
        context: &RequestContext,
        _space: &RwLock<AddressSpace>,
        nodes_to_write: &mut [&mut WriteNode],
    ) -> Result<(), StatusCode> {
        self.sessions.seen(context, 0);
        for w in nodes_to_write.iter_mut() {
            let status = self.write_one(context, w).await;
            self.count("write", status.sub_code().name());
            w.set_status(status);
        }
        Ok(())
    }

    /// The values as the address space holds them (the library's own way), brought up to the
    /// live state first, counted.
    async fn read_values(
        &self,
        context: &RequestContext,
        space: &RwLock<AddressSpace>,
        nodes: &[&ParsedReadValueId],
        max_age: f64,
        timestamps: TimestampsToReturn,
    ) -> Vec<DataValue> {
        self.count("read", "Good");
        self.sessions.seen(context, 0);
        self.refresh(space, nodes.iter().map(|n| &n.node_id));
        let space = space.read();
        nodes
            .iter()
            .map(|n| space.read(context, n, max_age, timestamps))
            .collect()
    }

    /// Each item starts with the value held (values are pushed as the pipeline reports them;
    /// nothing is sampled), counted while it lives.
    #[allow(clippy::mut_mut, reason = "the library's trait says so")]
    async fn create_value_monitored_items(
        &self,
        context: &RequestContext,
        space: &RwLock<AddressSpace>,
        items: &mut [&mut &mut CreateMonitoredItem],
    ) {
        self.refresh(space, items.iter().map(|i| &i.item_to_monitor().node_id));
        let space = space.read();
        for item in items.iter_mut() {
            let value = space.read(
                context,
                item.item_to_monitor(),
                0.0,
                TimestampsToReturn::Both,
            );
            if value.status() != StatusCode::BadAttributeIdInvalid {
                item.set_initial_value(value);
            }
            item.set_status(StatusCode::Good);
        }
        self.sessions.seen(context, items.len() as i64);
        self.count("create_monitored_items", "Good");
    }

    async fn delete_monitored_items(&self, context: &RequestContext, items: &[&MonitoredItemRef]) {
        self.sessions.seen(context, -(items.len() as i64));
        self.count("delete_monitored_items", "Good");
    }
}

/// A written Variant as the point's value: only its own DataType is taken (SPEC:
/// `Bad_TypeMismatch` otherwise), a float must be finite (`Bad_OutOfRange`).
fn value_of(kind: Kind, v: &Variant) -> Result<Value, StatusCode> {
    let value = match (kind, v) {
        (Kind::Boolean, Variant::Boolean(b)) => Value::Bool(*b),
        (Kind::UInt16, Variant::UInt16(x)) => Value::UInt(u64::from(*x)),
        (Kind::Int16, Variant::Int16(x)) => Value::Int(i64::from(*x)),
        (Kind::UInt32, Variant::UInt32(x)) => Value::UInt(u64::from(*x)),
        (Kind::Int32, Variant::Int32(x)) => Value::Int(i64::from(*x)),
        (Kind::UInt64, Variant::UInt64(x)) => Value::UInt(*x),
        (Kind::Int64, Variant::Int64(x)) => Value::Int(*x),
        (Kind::Float, Variant::Float(x)) => Value::Float(f64::from(*x)),
        (Kind::Double, Variant::Double(x)) => Value::Float(*x),
        (Kind::String, Variant::String(s)) => Value::Text(s.to_string()),
        _ => return Err(StatusCode::BadTypeMismatch),
    };
    if matches!(value, Value::Float(f) if !f.is_finite()) {
        return Err(StatusCode::BadOutOfRange);
    }
    Ok(value)
}

/// The status a failed write answers with.
fn status_of(e: &WriteError) -> StatusCode {
    match e {
        WriteError::NotWritable => StatusCode::BadNotWritable,
        WriteError::Encode(
            CodecError::OutOfRange { .. } | CodecError::NotFinite(_) | CodecError::NotAStep { .. },
        ) => StatusCode::BadOutOfRange,
        WriteError::Encode(_) => StatusCode::BadTypeMismatch,
        WriteError::Exception(_) => StatusCode::BadDeviceFailure,
        WriteError::Link(_) | WriteError::BusGone => StatusCode::BadCommunicationError,
        WriteError::TooOld { .. } => StatusCode::BadTimeout,
        WriteError::Busy => StatusCode::BadTooManyOperations,
    }
}
