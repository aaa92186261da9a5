//! The sections of the north side: the servers others read the gateway through (`[opcua]`,
//! `[modbus_server]`) and the keys a fleet signs with (`[fleet]`).

use std::collections::HashSet;
use std::path::Path;

use super::super::raw::{RawFleet, RawModbusServer, RawOpcua, RawServerUnit};
use super::super::{
    opcua_ids, Cidr, Device, Fleet, FleetKey, Layout, ModbusServer, Opcua, OpcuaSecurity,
    ServerUnit, OPCUA_MISSING,
};
use super::{KeyPath, Validator};

impl Validator {
    /// `[opcua]`: checked whether enabled or not, so a section prepared ahead is right when it
    /// is switched on.
    pub(super) fn opcua(&mut self, raw: RawOpcua, p: &KeyPath, data_dir: &Path) -> Opcua {
        if raw.enabled && !cfg!(feature = "opcua") {
            self.err(&p.key("enabled"), OPCUA_MISSING);
        }
        let listen = raw.listen.unwrap_or_else(|| "0.0.0.0:4840".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            self.err(
                &p.key("listen"),
                format!("`{listen}` is not an IP:port address"),
            );
        }
        let names = raw
            .security
            .unwrap_or_else(|| vec!["basic256sha256".into(), "aes256sha256rsapss".into()]);
        let mut security = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let policy = match name.as_str() {
                "none" => OpcuaSecurity::None,
                "basic256sha256" => OpcuaSecurity::Basic256Sha256,
                "aes256sha256rsapss" => OpcuaSecurity::Aes256Sha256RsaPss,
                other => {
                    self.err(
                        &p.key("security").index(i),
                        format!(
                            "unknown security `{other}` (expected basic256sha256, aes256sha256rsapss or none)"
                        ),
                    );
                    continue;
                }
            };
            if security.contains(&policy) {
                self.err(
                    &p.key("security").index(i),
                    format!("`{name}` is listed twice"),
                );
            } else {
                security.push(policy);
            }
        }
        if names.is_empty() {
            self.err(
                &p.key("security"),
                "must offer at least one endpoint (basic256sha256, aes256sha256rsapss or none)",
            );
        }
        let pki_dir = match raw.pki_dir {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => data_dir.join("pki"),
        };
        Opcua {
            enabled: raw.enabled,
            listen,
            security,
            anonymous: raw.anonymous,
            pki_dir,
            trust_client_certs: raw.trust_client_certs,
            max_sessions: self.int(&p.key("max_sessions"), raw.max_sessions, 20, 1, 1000) as usize,
        }
    }

    /// `[opcua]` on: a node whose NodeId a node added before it has (a device named as the
    /// gateway, device `a.b` beside point `b` of device `a`, a point named `Online`) is left out
    /// by the server, which warns at start; said here before, at the device's `id`.
    pub(super) fn opcua_names(&mut self, opcua: &Opcua, gateway: &str, devices: &[Device]) {
        if !opcua.enabled {
            return;
        }
        // In the order the server adds them: the gateway's folder, then each device's folder,
        // its `Online`, and each point with its properties.
        let mut taken = HashSet::from([gateway.to_owned()]);
        for (i, dev) in devices.iter().enumerate() {
            let p = KeyPath::default().key("devices").index(i).key("id");
            let mut claim = |id: String, what: &dyn std::fmt::Display| {
                let free = !taken.contains(&id);
                if free {
                    taken.insert(id);
                } else {
                    self.warn(
                        &p,
                        format!("OPC UA: {what} has the NodeId `{id}` of another node, so the server leaves it out (rename one)"),
                    );
                }
                free
            };
            if !claim(dev.id.clone(), &format_args!("device `{}`", dev.id)) {
                continue;
            }
            claim(opcua_ids::online(&dev.id), &"its `Online`");
            for point in &dev.points {
                let key = opcua_ids::point(&dev.id, &point.id);
                if !claim(key.clone(), &format_args!("point `{}`", point.id)) {
                    continue;
                }
                for name in opcua_ids::properties(point) {
                    let what = format_args!("the `{name}` of point `{}`", point.id);
                    claim(opcua_ids::property(&key, name), &what);
                }
            }
        }
    }

    /// `[modbus_server]`: checked whether enabled or not, like `[opcua]`.
    pub(super) fn modbus_server(
        &mut self,
        raw: RawModbusServer,
        p: &KeyPath,
        devices: &[Device],
    ) -> ModbusServer {
        let defaults = ModbusServer::default();
        let listen = match raw.listen {
            None => defaults.listen,
            Some(l) => l.parse().unwrap_or_else(|_| {
                self.err(&p.key("listen"), format!("`{l}` is not an IP:port address"));
                defaults.listen
            }),
        };
        let allowed_clients = match raw.allowed_clients {
            None => defaults.allowed_clients,
            Some(list) => {
                if list.is_empty() {
                    self.err(
                        &p.key("allowed_clients"),
                        "lists nobody, so no client could connect (`0.0.0.0/0` allows every IPv4 address)",
                    );
                }
                let mut ranges = Vec::new();
                for (i, c) in list.iter().enumerate() {
                    match Cidr::parse(c) {
                        Ok(r) => ranges.push(r),
                        Err(e) => self.err(&p.key("allowed_clients").index(i), e),
                    }
                }
                ranges
            }
        };
        let units = self.server_units(raw.units, p, devices);
        if raw.enabled && units.is_empty() {
            self.warn(
                &p.key("units"),
                "no `[[modbus_server.units]]`: every request will be answered with exception 0A (no such unit)",
            );
        }
        ModbusServer {
            enabled: raw.enabled,
            listen,
            allowed_clients,
            allow_writes: raw.allow_writes,
            max_connections: self.int(&p.key("max_connections"), raw.max_connections, 16, 1, 1000)
                as usize,
            max_requests_per_s: self.int(
                &p.key("max_requests_per_s"),
                raw.max_requests_per_s,
                1000,
                1,
                1_000_000,
            ) as u32,
            units,
        }
    }

    /// `[[modbus_server.units]]`: each unit id once, a device that exists, a known layout.
    fn server_units(
        &mut self,
        raw: Vec<RawServerUnit>,
        p: &KeyPath,
        devices: &[Device],
    ) -> Vec<ServerUnit> {
        let mut units: Vec<ServerUnit> = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let up = p.key("units").index(i);
            let unit = self.int(&up.key("unit"), u.unit, 1, 1, 247) as u8;
            if u.unit.is_none() {
                self.err(
                    &up.key("unit"),
                    "required: the unit id (1..=247) masters ask for",
                );
            } else if units.iter().any(|x| x.unit == unit) {
                self.err(&up.key("unit"), format!("unit {unit} is listed twice"));
            }
            let device = if self.required(&up.key("device"), u.device.is_empty()) {
                None
            } else {
                let d = devices.iter().position(|d| d.id == u.device);
                if d.is_none() {
                    self.err(&up.key("device"), format!("no device `{}`", u.device));
                }
                d
            };
            let layout = match u.layout.as_deref().unwrap_or("mirror") {
                "mirror" => Layout::Mirror,
                "float32" => Layout::Float32,
                other => {
                    self.err(
                        &up.key("layout"),
                        format!("unknown layout `{other}` (expected mirror or float32)"),
                    );
                    Layout::Mirror
                }
            };
            if let (Some(d), Layout::Float32) = (device, layout) {
                if devices[d].points.len() > 32_768 {
                    self.err(
                        &up.key("layout"),
                        "float32 gives each point two registers: more than 32,768 points do not fit",
                    );
                }
            }
            if let Some(device) = device {
                units.push(ServerUnit {
                    unit,
                    device,
                    layout,
                });
            }
        }
        units
    }

    /// `[fleet] public_keys`: each `ed25519:KEYID:BASE64` (a 32-byte key), each id once.
    pub(super) fn fleet(&mut self, raw: RawFleet, p: &KeyPath) -> Fleet {
        let mut keys: Vec<FleetKey> = Vec::new();
        for (i, k) in raw.public_keys.iter().enumerate() {
            let kp = p.key("public_keys").index(i);
            match FleetKey::parse(k) {
                Ok(key) if keys.iter().any(|x| x.id == key.id) => {
                    self.err(&kp, format!("key id `{}` is listed twice", key.id));
                }
                Ok(key) => keys.push(key),
                Err(e) => self.err(&kp, e),
            }
        }
        Fleet { keys }
    }
}
