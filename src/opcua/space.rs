//! The address space of the config: `Objects/{gateway}/{device}/{point}` variables with their
//! DataType and EngineeringUnits, an `Online` variable per device, and the values the live
//! state has as they start.

use indexmap::IndexMap;
use ua::server::address_space::AddressSpace;
use ua::server::address_space::{
    AccessLevel, EventNotifier, NodeType, ObjectBuilder, VariableBuilder,
};
use ua::sync::RwLock;
use ua::types::{
    DataTypeId, DataValue, DateTime, EUInformation, LocalizedText, NodeId, ObjectId, QualifiedName,
    Range, StatusCode, UAString, VariableTypeId, Variant,
};

use crate::config::{opcua_ids, Config};
use crate::model::format::DataType;
use crate::model::{Millis, Quality, Value};
use crate::state::Live;

/// The namespace of the gateway's own nodes (SPEC: `urn:edge-gateway:{gateway_id}`).
pub fn namespace_uri(gateway_id: &str) -> String {
    format!("urn:edge-gateway:{gateway_id}")
}

/// Points a client's read brings up to the live state under one take of its lock.
const REFRESH_CHUNK: usize = 256;

/// The node ids of the config's points and devices, by index.
pub struct Space {
    /// Each point's node and its place (device, point): a client's read finds the live value
    /// through it, a reported change its node through `slots`.
    nodes: IndexMap<NodeId, (usize, usize)>,
    /// Each point's entry in `nodes`, by device and point; `None` for a point whose NodeId
    /// another node already has (`a.b` + `c` and `a` + `b.c`): it is not served.
    slots: Vec<Vec<Option<usize>>>,
    kinds: Vec<Vec<Kind>>,
    writable: Vec<Vec<bool>>,
    /// Each device's folder, where its alarms are notified (`None`: not served).
    devices: Vec<Option<NodeId>>,
    names: Vec<String>,
    online: Vec<Option<NodeId>>,
    /// Every node added, for the next reload to take away.
    created: Vec<NodeId>,
}

impl Space {
    /// Adds the gateway's folder, a folder per device with its points and `Online`, each
    /// variable holding what the live state has (writable only where the point is).
    pub fn build(config: &Config, ns: u16, space: &RwLock<AddressSpace>, live: &Live) -> Space {
        let mut space = space.write();
        let gateway = NodeId::new(ns, config.gateway.id.clone());
        // Browse names in the gateway's namespace, as a client asks for them (`ns:name`).
        space.add_folder(
            &gateway,
            QualifiedName::new(ns, &config.gateway.id),
            config.gateway.id.as_str(),
            &ObjectId::ObjectsFolder.into(),
        );
        let devices = config.devices.len();
        let mut built = Space {
            nodes: IndexMap::new(),
            slots: Vec::with_capacity(devices),
            kinds: Vec::with_capacity(devices),
            writable: config
                .devices
                .iter()
                .map(|d| d.points.iter().map(|p| p.writable).collect())
                .collect(),
            devices: Vec::with_capacity(devices),
            names: config.devices.iter().map(|d| d.id.clone()).collect(),
            online: Vec::with_capacity(devices),
            created: vec![gateway.clone()],
        };
        for (d, dev) in config.devices.iter().enumerate() {
            built.add_device(&mut space, (ns, &gateway), (d, dev), live.devices.get(d));
        }
        built
    }

    /// Device `d`'s folder, its `Online` and its points, each left out with a warning where
    /// another node has its NodeId already (device `a.b` and point `b` of device `a`, a point
    /// named `Online`, ...): one variable must never show two things.
    fn add_device(
        &mut self,
        space: &mut AddressSpace,
        (ns, gateway): (u16, &NodeId),
        (d, dev): (usize, &crate::config::Device),
        live: Option<&crate::state::DeviceLive>,
    ) {
        let kinds: Vec<Kind> = dev
            .points
            .iter()
            .map(|p| Kind::of(p.format.data_type, p.format.scaled()))
            .collect();
        let online = live.is_some_and(|l| l.online);
        let folder = NodeId::new(ns, dev.id.clone());
        let mut slots = vec![None; dev.points.len()];
        let served = free(space, &folder, format_args!("device `{}`", dev.id));
        if served {
            // A device's folder notifies its alarms (and the Server object all of them).
            ObjectBuilder::new(&folder, QualifiedName::new(ns, &dev.id), dev.id.as_str())
                .is_folder()
                .organized_by(gateway)
                .event_notifier(EventNotifier::SUBSCRIBE_TO_EVENTS)
                .insert(space);
            self.created.push(folder.clone());
            let on = NodeId::new(ns, opcua_ids::online(&dev.id));
            let on = free(
                space,
                &on,
                format_args!("the `Online` of device `{}`", dev.id),
            )
            .then(|| add_online(space, &on, &folder, ns, online))
            .map(|()| on);
            self.created.extend(on.clone());
            self.online.push(on);
            for (p, point) in dev.points.iter().enumerate() {
                let key = opcua_ids::point(&dev.id, &point.id);
                let id = NodeId::new(ns, key.clone());
                let what = format_args!("point `{}` of device `{}`", point.id, dev.id);
                if !free(space, &id, what) {
                    continue;
                }
                let value = live.and_then(|l| l.points.get(p)).map_or_else(
                    || data_value(None, Quality::Stale, 0, kinds[p], online),
                    |l| data_value(l.value.as_ref(), l.quality, l.ts, kinds[p], online),
                );
                let name = QualifiedName::new(ns, &point.id);
                add_point(space, &id, &folder, name, point, kinds[p], value);
                add_properties(space, ns, (&id, &key), point, &mut self.created);
                self.created.push(id.clone());
                slots[p] = Some(self.nodes.insert_full(id, (d, p)).0);
            }
        } else {
            self.online.push(None);
        }
        self.devices.push(served.then_some(folder));
        self.slots.push(slots);
        self.kinds.push(kinds);
    }

    /// Every node this space added.
    pub fn created(&self) -> &[NodeId] {
        &self.created
    }

    /// Takes `nodes` (an earlier space's) out of the address space, with their references: a
    /// reload's space is built fresh, under the same NodeIds where points stay (monitored
    /// items on those go on; the library keys them by NodeId).
    pub fn remove(space: &RwLock<AddressSpace>, nodes: &[NodeId]) {
        let mut space = space.write();
        for id in nodes {
            space.delete(id, true);
        }
    }

    /// The writable point behind `id`, for the write service.
    pub fn target(&self, id: &NodeId) -> Option<super::nodes::Target> {
        let &(device, point) = self.nodes.get(id)?;
        let writable = *self.writable.get(device)?.get(point)?;
        writable.then(|| super::nodes::Target {
            device,
            point,
            kind: self.kinds[device][point],
        })
    }

    /// A point's node (by its slot: see `node`) and its value as served, for a reported
    /// change; `None` for a point not served.
    pub fn value(
        &self,
        device: usize,
        point: usize,
        value: Option<&Value>,
        quality: Quality,
        ts: Millis,
        online: bool,
    ) -> Option<(usize, DataValue)> {
        let slot = (*self.slots.get(device)?.get(point)?)?;
        let kind = *self.kinds.get(device)?.get(point)?;
        let mut dv = data_value(value, quality, ts, kind, online);
        // Offline's null without a value, a failed read's as the null Variant: both are null on
        // the wire, but async-opcua tells an item without a filter of a change only when the
        // values differ, so only this way does such an item see `Bad` turn `Bad_NoCommunication`
        // (and back). Notified only: a variable in the address space keeps the null Variant.
        if dv.status == Some(StatusCode::BadNoCommunication) {
            dv.value = None;
        }
        Some((slot, dv))
    }

    /// The NodeId of a point's slot.
    pub fn node(&self, slot: usize) -> Option<&NodeId> {
        self.nodes.get_index(slot).map(|(id, _)| id)
    }

    /// Brings the variables of `ids` that are points up to the live state before a client
    /// reads them: a reported change only notifies the monitored items (the address space
    /// is not written 15,000 times a second for the odd read).
    pub fn refresh<'a>(
        &self,
        space: &RwLock<AddressSpace>,
        live: &crate::state::SharedLive,
        ids: impl Iterator<Item = &'a NodeId>,
    ) {
        let mut points = ids
            .filter_map(|id| Some((id, *self.nodes.get(id)?)))
            .peekable();
        // A chunk at a time: the live state's lock is the field thread's too, and a client
        // may read thousands of nodes at once.
        while points.peek().is_some() {
            let values: Vec<(&NodeId, DataValue)> = {
                let live = crate::state::read(live);
                points
                    .by_ref()
                    .take(REFRESH_CHUNK)
                    .filter_map(|(id, (d, p))| {
                        let dev = live.devices.get(d)?;
                        let l = dev.points.get(p)?;
                        let kind = self.kinds[d][p];
                        let value = data_value(l.value.as_ref(), l.quality, l.ts, kind, dev.online);
                        Some((id, value))
                    })
                    .collect()
            };
            let mut space = space.write();
            for (id, value) in values {
                if let Some(NodeType::Variable(v)) = space.find_mut(id) {
                    v.set_data_value(value);
                }
            }
        }
    }

    pub fn device(&self, device: usize) -> Option<&NodeId> {
        self.devices.get(device)?.as_ref()
    }

    /// A device's id, as the events' SourceName.
    pub fn source_name(&self, device: usize) -> Option<&str> {
        self.names.get(device).map(String::as_str)
    }

    pub fn online(&self, device: usize) -> Option<&NodeId> {
        self.online.get(device)?.as_ref()
    }
}

/// Whether `id` is still free; when another node has it, a warning that `what` is not served.
fn free(space: &AddressSpace, id: &NodeId, what: std::fmt::Arguments) -> bool {
    let free = !space.node_exists(id);
    if !free {
        tracing::warn!("OPC UA: {what} has the NodeId of another node ({id}): not served");
    }
    free
}

/// A point's variable, holding `value`. A writable point may be written by an admin's session
/// (the authenticator takes the write access away from everyone else's).
fn add_point(
    space: &mut AddressSpace,
    id: &NodeId,
    folder: &NodeId,
    name: QualifiedName,
    point: &crate::config::Point,
    kind: Kind,
    value: DataValue,
) {
    let access = AccessLevel::CURRENT_READ
        | if point.writable {
            AccessLevel::CURRENT_WRITE
        } else {
            AccessLevel::empty()
        };
    VariableBuilder::new(id, name, point.id.as_str())
        .organized_by(folder)
        .data_type(kind.data_type())
        .value(value.value.clone().unwrap_or(Variant::Empty))
        .access_level(access)
        .user_access_level(access)
        .insert(space);
    // With its status and source timestamp, not only the value.
    if let Some(NodeType::Variable(v)) = space.find_mut(id) {
        v.set_data_value(value);
    }
}

/// A device's `Online` (Boolean, read-only).
fn add_online(space: &mut AddressSpace, id: &NodeId, folder: &NodeId, ns: u16, online: bool) {
    VariableBuilder::new(id, QualifiedName::new(ns, "Online"), "Online")
        .organized_by(folder)
        .data_type(DataTypeId::Boolean)
        .value(online)
        .access_level(AccessLevel::CURRENT_READ)
        .user_access_level(AccessLevel::CURRENT_READ)
        .insert(space);
}

/// A point's standard properties ([`opcua_ids::properties`]), each `{its NodeId}.{name}`:
/// `EngineeringUnits` from its `unit`, `EURange` from its `min` … `max`.
fn add_properties(
    space: &mut AddressSpace,
    ns: u16,
    (id, key): (&NodeId, &str),
    point: &crate::config::Point,
    created: &mut Vec<NodeId>,
) {
    for name in opcua_ids::properties(point) {
        let pid = NodeId::new(ns, opcua_ids::property(key, name));
        if !free(space, &pid, format_args!("the `{name}` of {key}")) {
            continue;
        }
        match (name, point.min, point.max) {
            ("EURange", Some(low), Some(high)) => add_range(space, &pid, id, low, high),
            _ => add_unit(space, &pid, id, &point.unit),
        }
        created.push(pid);
    }
}

/// A point's `EURange` property (its `min` … `max`): what a percent deadband is a percent of.
fn add_range(space: &mut AddressSpace, id: &NodeId, of: &NodeId, low: f64, high: f64) {
    VariableBuilder::new(id, "EURange", "EURange")
        .property_of(of)
        .has_type_definition(VariableTypeId::PropertyType)
        .data_type(DataTypeId::Range)
        .value(ua::types::ExtensionObject::from_message(Range {
            low,
            high,
        }))
        .access_level(AccessLevel::CURRENT_READ)
        .user_access_level(AccessLevel::CURRENT_READ)
        .insert(space);
}

/// A point's `EngineeringUnits` property (EUInformation; the unit's text as its name).
fn add_unit(space: &mut AddressSpace, eu: &NodeId, of: &NodeId, unit: &str) {
    VariableBuilder::new(eu, "EngineeringUnits", "EngineeringUnits")
        .property_of(of)
        .has_type_definition(VariableTypeId::PropertyType)
        .data_type(DataTypeId::EUInformation)
        .value(ua::types::ExtensionObject::from_message(EUInformation {
            namespace_uri: UAString::null(),
            unit_id: -1,
            display_name: LocalizedText::new("", unit),
            description: LocalizedText::new("", unit),
        }))
        .access_level(AccessLevel::CURRENT_READ)
        .user_access_level(AccessLevel::CURRENT_READ)
        .insert(space);
}

/// The OPC UA type a point is served as: its own, or Double when scaled (SPEC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Boolean,
    UInt16,
    Int16,
    UInt32,
    Int32,
    UInt64,
    Int64,
    Float,
    Double,
    String,
}

impl Kind {
    pub fn of(t: DataType, scaled: bool) -> Kind {
        match t {
            DataType::Bool => Kind::Boolean,
            DataType::String => Kind::String,
            _ if scaled => Kind::Double,
            DataType::U16 => Kind::UInt16,
            DataType::I16 => Kind::Int16,
            DataType::U32 => Kind::UInt32,
            DataType::I32 => Kind::Int32,
            DataType::U64 => Kind::UInt64,
            DataType::I64 => Kind::Int64,
            DataType::F32 => Kind::Float,
            DataType::F64 => Kind::Double,
        }
    }

    fn data_type(self) -> DataTypeId {
        match self {
            Kind::Boolean => DataTypeId::Boolean,
            Kind::UInt16 => DataTypeId::UInt16,
            Kind::Int16 => DataTypeId::Int16,
            Kind::UInt32 => DataTypeId::UInt32,
            Kind::Int32 => DataTypeId::Int32,
            Kind::UInt64 => DataTypeId::UInt64,
            Kind::Int64 => DataTypeId::Int64,
            Kind::Float => DataTypeId::Float,
            Kind::Double => DataTypeId::Double,
            Kind::String => DataTypeId::String,
        }
    }

    /// A value as this type (the decoder gives every integer as i64 or u64, every float as
    /// f64): the declared DataType, never a neighbour a client would have to convert.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the decoder's range is the type's"
    )]
    pub fn cast(self, v: Variant) -> Variant {
        let int = |v: &Variant| match v {
            Variant::Int64(i) => Some(i128::from(*i)),
            Variant::UInt64(u) => Some(i128::from(*u)),
            Variant::Boolean(b) => Some(i128::from(*b)),
            _ => None,
        };
        let float = |v: &Variant| match v {
            Variant::Double(f) => Some(*f),
            Variant::Int64(i) => Some(*i as f64),
            Variant::UInt64(u) => Some(*u as f64),
            _ => None,
        };
        match (self, int(&v), float(&v)) {
            (Kind::Boolean, Some(i), _) => Variant::Boolean(i != 0),
            (Kind::UInt16, Some(i), _) => Variant::UInt16(i as u16),
            (Kind::Int16, Some(i), _) => Variant::Int16(i as i16),
            (Kind::UInt32, Some(i), _) => Variant::UInt32(i as u32),
            (Kind::Int32, Some(i), _) => Variant::Int32(i as i32),
            (Kind::UInt64, Some(i), _) => Variant::UInt64(i as u64),
            (Kind::Int64, Some(i), _) => Variant::Int64(i as i64),
            (Kind::Float, _, Some(f)) => Variant::Float(f as f32),
            (Kind::Double, _, Some(f)) => Variant::Double(f),
            _ => v,
        }
    }
}

/// A point's value (as its `kind`), status and source timestamp as OPC UA serves them: `Good`,
/// `Uncertain_LastUsableValue` (stale), `Bad` (the read failed); its device offline, or no value
/// ever read, is `Bad_NoCommunication` (the last value kept).
fn data_value(
    value: Option<&Value>,
    quality: Quality,
    ts: Millis,
    kind: Kind,
    online: bool,
) -> DataValue {
    let status = match (value, quality) {
        (None, _) => StatusCode::BadNoCommunication,
        (Some(_), Quality::Good) if online => StatusCode::Good,
        (Some(_), _) if !online => StatusCode::BadNoCommunication,
        (Some(_), Quality::Good) => StatusCode::Good,
        (Some(_), Quality::Stale) => StatusCode::UncertainLastUsableValue,
        (Some(_), Quality::Bad) => StatusCode::Bad,
    };
    // A Bad status carries a null value (OPC UA Part 4, DataValue: the server sets it to null).
    // It is also what a subscriber without a filter is told by: async-opcua compares only the
    // values for such an item, so the last good value kept under Bad_NoCommunication never
    // reached it as a change. Null as `Variant::Empty`, not as no value: the library's read
    // drops the status of a variable without one.
    if status.is_bad() {
        return DataValue {
            value: Some(Variant::Empty),
            ..served(status, ts)
        };
    }
    let variant = value
        .map(|v| match v {
            Value::Bool(b) => Variant::Boolean(*b),
            Value::Int(i) => Variant::Int64(*i),
            Value::UInt(u) => Variant::UInt64(*u),
            Value::Float(f) => Variant::Double(*f),
            Value::Text(s) => Variant::String(s.as_str().into()),
        })
        .map(|v| kind.cast(v));
    DataValue {
        value: variant,
        ..served(status, ts)
    }
}

/// A value's status and timestamps: the sample's `ts` as its source, now as the server's.
fn served(status: StatusCode, ts: Millis) -> DataValue {
    let at = chrono::DateTime::from_timestamp_millis(ts).map_or_else(DateTime::now, DateTime::from);
    DataValue {
        value: None,
        status: Some(status),
        source_timestamp: Some(at),
        source_picoseconds: Some(0),
        server_timestamp: Some(DateTime::now()),
        server_picoseconds: Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, address: u16, extra: &str) -> String {
        format!(
            "{{ id = \"{id}\", table = \"holding\", address = {address}, type = \"u16\"{extra} }},"
        )
    }

    #[test]
    fn a_node_id_another_node_has_is_served_once() {
        let device = |id: &str, unit: u8, points: &[String]| {
            format!(
                "[[devices]]\nid = \"{id}\"\nbus = \"b\"\nunit = {unit}\npoints = [{}]\n",
                points.concat()
            )
        };
        let text = [
            "[gateway]\nid = \"gw\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"h:502\"\n"
                .to_string(),
            device(
                "a",
                1,
                &[
                    point("b.c", 0, ""),
                    point("Online", 1, ""),
                    point("level", 2, ", unit = \"m\""),
                    point("level.EngineeringUnits", 3, ""),
                ],
            ),
            device("a.b", 2, &[point("c", 0, ""), point("d", 1, "")]),
            device("gw", 3, &[point("x", 0, "")]),
        ]
        .concat();
        let config = crate::config::parse(&text).unwrap().config;
        let mut address_space = AddressSpace::new();
        address_space.add_namespace("http://opcfoundation.org/UA/", 0);
        address_space.add_namespace(&namespace_uri("gw"), 2);
        let address_space = RwLock::new(address_space);
        let space = Space::build(&config, 2, &address_space, &Live::default());
        let served = |d: usize, p: usize| {
            let v = space.value(d, p, None, Quality::Stale, 0, true);
            v.and_then(|(slot, _)| space.node(slot))
                .map(ToString::to_string)
        };
        assert_eq!(served(0, 0).as_deref(), Some("ns=2;s=a.b.c"));
        assert_eq!(
            served(0, 1),
            None,
            "a point named Online is not the device's Online"
        );
        assert_eq!(served(0, 2).as_deref(), Some("ns=2;s=a.level"));
        assert_eq!(served(0, 3), None, "a point named as another's property");
        assert_eq!(served(1, 0), None, "a.b + c is a + b.c, served first");
        assert_eq!(served(1, 1).as_deref(), Some("ns=2;s=a.b.d"));
        assert!(space.online(1).is_some());
        assert_eq!(served(2, 0), None, "a device named as the gateway");
        assert!(space.device(2).is_none() && space.online(2).is_none());
        let address_space = address_space.read();
        let online = address_space.find(&NodeId::new(2, "a.Online"));
        let Some(NodeType::Variable(online)) = online else {
            panic!("a.Online is a variable");
        };
        assert_eq!(
            online
                .value(
                    ua::types::TimestampsToReturn::Neither,
                    &ua::types::NumericRange::None,
                    &ua::types::DataEncoding::Binary,
                    0.0
                )
                .value,
            Some(Variant::Boolean(false))
        );
    }
}
