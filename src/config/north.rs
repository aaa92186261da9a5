//! The sections of the north side as validated domain types: `[opcua]`, `[modbus_server]`
//! (units by device index, clients as address ranges) and `[fleet]` (the keys remote config
//! and rpc are signed with).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Why `[opcua] enabled = true` is refused by a build without the cargo feature `opcua`.
pub const OPCUA_MISSING: &str =
    "this build has no OPC UA server (built without the cargo feature `opcua`)";

/// `[opcua]`: the OPC UA server a plant's SCADA reads, subscribes to and writes (off unless
/// `enabled`).
#[derive(Debug, Clone, PartialEq)]
pub struct Opcua {
    pub enabled: bool,
    /// `IP:port`; the endpoint is `opc.tcp://HOST:port/`.
    pub listen: String,
    /// The endpoints offered, each with SignAndEncrypt (`None`: an unsecured one).
    pub security: Vec<OpcuaSecurity>,
    /// Anonymous sessions may browse and read, never write.
    pub anonymous: bool,
    /// `{data_dir}/pki` unless set: the own certificate, `trusted/` and `rejected/`.
    pub pki_dir: PathBuf,
    /// An unknown client certificate is trusted at once instead of landing in `rejected/`.
    pub trust_client_certs: bool,
    pub max_sessions: usize,
}

/// The string NodeIds the OPC UA server gives the config's nodes in its namespace: one rule
/// for the server and for `check-config`, which warns of two nodes named alike.
pub mod opcua_ids {
    use super::super::Point;

    /// A device's `Online` variable.
    pub fn online(device: &str) -> String {
        format!("{device}.Online")
    }

    /// A point's variable.
    pub fn point(device: &str, point: &str) -> String {
        format!("{device}.{point}")
    }

    /// One of a point's properties, under its variable's NodeId.
    pub fn property(point: &str, name: &str) -> String {
        format!("{point}.{name}")
    }

    /// The properties a point has: `EngineeringUnits` with a `unit`, `EURange` with both `min`
    /// and `max`.
    pub fn properties(point: &Point) -> impl Iterator<Item = &'static str> {
        let unit = (!point.unit.is_empty()).then_some("EngineeringUnits");
        let range = (point.min.is_some() && point.max.is_some()).then_some("EURange");
        unit.into_iter().chain(range)
    }
}

/// An OPC UA endpoint's security policy, as `[opcua] security` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpcuaSecurity {
    /// `none`: no signing, no encryption (only when listed).
    None,
    /// `basic256sha256`, with SignAndEncrypt.
    Basic256Sha256,
    /// `aes256sha256rsapss`, with SignAndEncrypt.
    Aes256Sha256RsaPss,
}

/// `[fleet]`: who may send this gateway signed config and rpc over the broker (none: off).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fleet {
    pub keys: Vec<FleetKey>,
}

impl super::Config {
    /// A fleet topic of this gateway, `{topic_prefix}/{gateway id}/{leaf}`, whatever the MQTT
    /// format.
    pub fn fleet_topic(&self, leaf: &str) -> String {
        format!("{}/{}/{leaf}", self.fleet_prefix(), self.gateway.id)
    }

    /// `[mqtt] topic_prefix`, under which `_all` reaches every gateway.
    pub fn fleet_prefix(&self) -> &str {
        self.mqtt
            .as_ref()
            .map_or("edge", |m| m.topic_prefix.as_str())
    }
}

/// One key of `[fleet] public_keys` (`ed25519:KEYID:BASE64`).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetKey {
    pub id: String,
    /// The Ed25519 public key, 32 bytes.
    pub public: Vec<u8>,
}

impl FleetKey {
    pub fn parse(s: &str) -> Result<FleetKey, String> {
        use base64::Engine as _;
        let mut parts = s.trim().splitn(3, ':');
        let (Some("ed25519"), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "`{s}` is not `ed25519:KEYID:BASE64` (`edge-gateway fleet keygen` prints one)"
            ));
        };
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "key id `{id}`: letters, digits, `-`, `_` and `.` only"
            ));
        }
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(public) if public.len() == 32 => Ok(FleetKey {
                id: id.to_string(),
                public,
            }),
            Ok(k) => Err(format!(
                "key `{id}`: {} bytes, an Ed25519 key has 32",
                k.len()
            )),
            Err(e) => Err(format!("key `{id}`: not base64 ({e})")),
        }
    }
}

/// `[modbus_server]` and its `[[modbus_server.units]]` (off unless `enabled`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusServer {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Who may connect; anyone else is closed at accept and counted.
    pub allowed_clients: Vec<Cidr>,
    pub allow_writes: bool,
    pub max_connections: usize,
    /// Requests one connection may make per second; faster ones wait (the socket is not
    /// read meanwhile), so one greedy master cannot take the box's CPU from the others.
    pub max_requests_per_s: u32,
    pub units: Vec<ServerUnit>,
}

impl Default for ModbusServer {
    fn default() -> ModbusServer {
        ModbusServer {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 5020)),
            allowed_clients: vec![Cidr::parse("127.0.0.1/32").expect("a valid range")],
            allow_writes: false,
            max_connections: 16,
            max_requests_per_s: 1000,
            units: Vec::new(),
        }
    }
}

impl ModbusServer {
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed_clients.iter().any(|c| c.contains(ip))
    }
}

/// One unit id the server answers, and the device behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerUnit {
    pub unit: u8,
    /// Index into [`super::Config::devices`].
    pub device: usize,
    pub layout: Layout,
}

/// How a unit's tables are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The device's own tables and addresses, from the raw registers of its last good read.
    Mirror,
    /// Every point in point order from 0, two registers each (a big-endian IEEE float of its
    /// engineering value); bool points also as coils and discrete inputs from 0.
    Float32,
}

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `ADDR` or `ADDR/BITS`, IPv4 or IPv6.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address or address/bits range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.trim().parse::<u8>() {
                Ok(b) if b <= max => b,
                _ => return Err(format!("`{s}`: the prefix length must be 0..={max}")),
            },
        };
        Ok(Cidr { net, bits })
    }

    /// Whether `ip` is in the range; an IPv4 client on an IPv6 socket (`::ffff:a.b.c.d`) is
    /// matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let whole = bits / 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_their_addresses_only() {
        let lan = Cidr::parse("192.168.1.0/24").unwrap();
        assert!(lan.contains("192.168.1.77".parse().unwrap()));
        assert!(!lan.contains("192.168.2.1".parse().unwrap()));
        assert!(lan.contains("::ffff:192.168.1.5".parse().unwrap()));
        let one = Cidr::parse("10.0.0.5").unwrap();
        assert!(one.contains("10.0.0.5".parse().unwrap()));
        assert!(!one.contains("10.0.0.4".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let odd = Cidr::parse("10.0.0.0/9").unwrap();
        assert!(odd.contains("10.127.0.1".parse().unwrap()));
        assert!(!odd.contains("10.128.0.1".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("plc-1").is_err());
    }
}
