//! The commands besides `run`: one-off `read`/`write` for commissioning, `demo`, `simulate`,
//! `check-config` and `hash-password`; the subcommands' bodies the binary calls in `commands`.

pub mod commands;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{self, Link, Parity};
use crate::modbus::codec::{self, DataType, Format, Table};
use crate::modbus::link;
use crate::modbus::plan::{MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ};
use crate::modbus::reply::{Data, LinkError, WriteOp};
use crate::modbus::simulator::{self, Profile, Simulator};
use crate::model::Value;

/// Exit codes of `read` and `write` (SPEC.md).
pub const EXIT_OK: i32 = 0;
pub const EXIT_EXCEPTION: i32 = 2;
pub const EXIT_LINK: i32 = 3;
/// Bad arguments or config (EX_USAGE / EX_CONFIG style; 2 is taken by exceptions).
pub const EXIT_USAGE: i32 = 64;

/// A link as given on the command line (SPEC.md's LINK).
pub struct LinkSpec {
    /// `--tcp HOST[:PORT]`
    pub tcp: Option<String>,
    /// `--rtu-over-tcp HOST:PORT`
    pub rtu_over_tcp: Option<String>,
    /// `--serial DEV`, with the line settings below.
    pub serial: Option<String>,
    pub baud: u32,
    pub parity: String,
    pub data_bits: u8,
    pub stop_bits: u8,
}

/// The link a [`LinkSpec`] names; exactly one of its three kinds.
pub fn link_from_args(spec: LinkSpec) -> Result<Link, String> {
    match (spec.tcp, spec.rtu_over_tcp, spec.serial) {
        (Some(address), None, None) => Ok(Link::Tcp {
            address: with_default_port(address),
        }),
        (None, Some(address), None) => Ok(Link::RtuOverTcp { address }),
        (None, None, Some(port)) => {
            if !(5..=8).contains(&spec.data_bits) || !(1..=2).contains(&spec.stop_bits) {
                return Err("--data-bits takes 5 to 8 and --stop-bits 1 or 2".into());
            }
            Ok(Link::Rtu {
                port,
                baud: spec.baud,
                parity: match spec.parity.as_str() {
                    "none" => Parity::None,
                    "even" => Parity::Even,
                    "odd" => Parity::Odd,
                    other => {
                        return Err(format!(
                            "unknown parity `{other}` (expected none, even or odd)"
                        ))
                    }
                },
                data_bits: spec.data_bits,
                stop_bits: spec.stop_bits,
            })
        }
        _ => Err(
            "give exactly one of --tcp HOST:PORT, --rtu-over-tcp HOST:PORT or --serial DEV".into(),
        ),
    }
}

/// `HOST` as `HOST:502`, Modbus TCP's port; a `HOST:PORT` (or `[v6]:PORT`) as given.
fn with_default_port(address: String) -> String {
    let has_port = match address.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        address
    } else if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:502") // a bare IPv6 address
    } else {
        format!("{address}:502")
    }
}

/// A Modicon reference's table by its first digit (5 digits: 40001 … 49999; 6: 400001 … 465536).
fn modicon(s: &str) -> Option<(u16, Table)> {
    if !s.bytes().all(|b| b.is_ascii_digit()) || !(5..=6).contains(&s.len()) {
        return None;
    }
    let table = match s.as_bytes()[0] {
        b'0' => Table::Coil,
        b'1' => Table::Discrete,
        b'3' => Table::Input,
        b'4' => Table::Holding,
        _ => return None,
    };
    let n: u32 = s[1..].parse().ok()?;
    let max = if s.len() == 5 { 9999 } else { 65536 };
    if !(1..=max).contains(&n) {
        return None;
    }
    Some((u16::try_from(n - 1).ok()?, table))
}

/// The protocol address and table of `--address` and `--table`: decimal, `0x` hex, or a
/// Modicon reference (`40003` = holding 2), whose mapping is said on stderr.
pub fn address_from_args(address: &str, table: Option<&str>) -> Result<(u16, String), String> {
    let a = address.trim();
    if let Some(hex) = a.strip_prefix("0x").or_else(|| a.strip_prefix("0X")) {
        let n = u16::from_str_radix(hex, 16)
            .map_err(|_| format!("--address {a}: not a 16-bit hex address"))?;
        return table
            .map(|t| (n, t.to_string()))
            .ok_or_else(|| "--table is needed with a protocol address".to_string());
    }
    if let Some((n, t)) = modicon(a) {
        let name = t.to_string();
        if let Some(given) = table.filter(|given| *given != name) {
            return Err(format!(
                "--address {a} is a Modicon reference to {name} {n}, but --table is {given}; \
                 give the protocol address in hex (0x{:04X}) for {given} address {a}",
                a.parse::<u32>().unwrap_or(0)
            ));
        }
        eprintln!("note: {a} is a Modicon reference: {name} address {n} (0-based)");
        return Ok((n, name));
    }
    let n: u16 = a.parse().map_err(|_| {
        format!("--address {a}: expected 0 … 65535, 0x hex, or a Modicon reference like 40003")
    })?;
    table
        .map(|t| (n, t.to_string()))
        .ok_or_else(|| "--table is needed with a protocol address".to_string())
}

/// What `read` and `write` need besides the link.
pub struct Target {
    pub link: Link,
    pub unit: u8,
    pub table: Table,
    pub address: u16,
    pub format: Format,
    pub timeout: Duration,
}

/// Builds the point format from the CLI's type and order flags.
pub fn format_from_args(
    table: &str,
    data_type: Option<&str>,
    byte_order: &str,
    word_order: &str,
    length: u16,
) -> Result<(Table, Format), String> {
    let table = Table::parse(table).ok_or_else(|| {
        format!("unknown table `{table}` (expected coil, discrete, input or holding)")
    })?;
    let default_type = if table.is_bits() { "bool" } else { "u16" };
    let t = data_type.unwrap_or(default_type);
    let data_type = DataType::parse(t).ok_or_else(|| format!("unknown type `{t}`"))?;
    if table.is_bits() && data_type != DataType::Bool {
        return Err(format!("a {table} holds bits: --type must be bool"));
    }
    if data_type == DataType::String && length == 0 {
        return Err("--type string needs --length N registers".into());
    }
    let mut f = Format::raw(table, data_type);
    f.length = length;
    f.byte_order = codec::ByteOrder::parse(byte_order).ok_or("--byte-order is big or little")?;
    f.word_order = codec::WordOrder::parse(word_order).ok_or("--word-order is big or little")?;
    Ok((table, f))
}

fn link_exit(e: &LinkError) -> i32 {
    eprintln!("error: {e}");
    EXIT_LINK
}

/// How `read` prints its values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReadOutput {
    /// One bare value per line (SPEC; what a script reads).
    Values,
    /// `{"values":[…]}` (or `{"orders":{…}}`).
    Json,
    /// `address  raw-hex  → value` per line, for a person at a terminal.
    Annotated,
}

/// `read`: prints `count` decoded values, one per line (annotated with address and raw
/// registers on a terminal) or as `{"values":[…]}`.
pub async fn read(t: Target, count: u16, output: ReadOutput, all_orders: bool) -> i32 {
    let (bits, regs) = match fetch(&t, count).await {
        Ok(data) => data,
        Err(code) => return code,
    };
    // The inspector's four columns (which order turns the registers into the right value), or
    // the one order asked for.
    let orders: Vec<(&str, Vec<serde_json::Value>)> = if all_orders && !t.table.is_bits() {
        let mut out = Vec::new();
        for (name, bo, wo) in ORDERS {
            let mut f = t.format.clone();
            (f.byte_order, f.word_order) = (bo, wo);
            match values(&f, &bits, &regs, count) {
                Ok(v) => out.push((name, v)),
                Err(code) => return code,
            }
        }
        out
    } else {
        match values(&t.format, &bits, &regs, count) {
            Ok(v) => vec![("", v)],
            Err(code) => return code,
        }
    };
    let mut out = std::io::stdout().lock();
    if output == ReadOutput::Json {
        let json = if let [("", values)] = orders.as_slice() {
            serde_json::json!({ "values": values })
        } else {
            let map: serde_json::Map<String, serde_json::Value> = orders
                .into_iter()
                .map(|(name, v)| (name.to_string(), serde_json::Value::Array(v)))
                .collect();
            serde_json::json!({ "orders": map })
        };
        let _ = writeln!(out, "{json}");
        return EXIT_OK;
    }
    let width = usize::from(t.format.width());
    for i in 0..count as usize {
        let decoded: Vec<String> = orders
            .iter()
            .map(|(name, v)| {
                if name.is_empty() {
                    plain(&v[i])
                } else {
                    format!("{name} {}", plain(&v[i]))
                }
            })
            .collect();
        let decoded = decoded.join("  ");
        if output == ReadOutput::Annotated {
            let address = usize::from(t.address) + i * width;
            let raw = if t.table.is_bits() {
                u8::from(bits.get(i).copied().unwrap_or(false)).to_string()
            } else {
                let words = regs.get(i * width..(i + 1) * width).unwrap_or(&[]);
                let hex: Vec<String> = words.iter().map(|w| format!("0x{w:04X}")).collect();
                hex.join(" ")
            };
            let _ = writeln!(out, "{address:>5}  {raw}  → {decoded}");
        } else {
            let _ = writeln!(out, "{decoded}");
        }
    }
    EXIT_OK
}

/// The byte/word orders by the names device manuals use.
const ORDERS: [(&str, codec::ByteOrder, codec::WordOrder); 4] = [
    ("ABCD", codec::ByteOrder::Big, codec::WordOrder::Big),
    ("BADC", codec::ByteOrder::Little, codec::WordOrder::Big),
    ("CDAB", codec::ByteOrder::Big, codec::WordOrder::Little),
    ("DCBA", codec::ByteOrder::Little, codec::WordOrder::Little),
];

/// A value as a line of `read`'s output: text unquoted.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The raw bits or registers of `count` values, in whole values per request; the exit code on
/// an exception or a link fault (said on stderr).
async fn fetch(t: &Target, count: u16) -> Result<(Vec<bool>, Vec<u16>), i32> {
    let width = u32::from(t.format.width());
    let total = width * u32::from(count);
    if total == 0 || u32::from(t.address) + total > 65536 {
        eprintln!(
            "error: {count} values of {width} from address {} run past 65535",
            t.address
        );
        return Err(EXIT_USAGE);
    }
    let per_read = u32::from(if t.table.is_bits() {
        MAX_BITS_PER_READ
    } else {
        MAX_REGISTERS_PER_READ
    });
    // Whole values per request, so no value straddles two reads.
    let chunk = (per_read / width).max(1) * width;
    let mut l = link::Link::new(t.link.clone(), t.timeout, Duration::ZERO);
    let (mut bits, mut regs) = (Vec::new(), Vec::new());
    let mut done = 0u32;
    while done < total {
        let n = chunk.min(total - done) as u16;
        match l.read(t.unit, t.table, t.address + done as u16, n).await {
            Ok(Ok(Data::Bits(b))) => bits.extend(b),
            Ok(Ok(Data::Registers(r))) => regs.extend(r),
            Ok(Err(code)) => {
                eprintln!(
                    "error: device answered exception 0x{:02X}: {code}",
                    code.code()
                );
                return Err(EXIT_EXCEPTION);
            }
            Err(e) => return Err(link_exit(&e)),
        }
        done += u32::from(n);
    }
    Ok((bits, regs))
}

/// `count` values decoded by `f`.
fn values(
    f: &Format,
    bits: &[bool],
    regs: &[u16],
    count: u16,
) -> Result<Vec<serde_json::Value>, i32> {
    let w = usize::from(f.width());
    let mut values = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let v = if f.table.is_bits() {
            Ok(codec::decode_bit(bits.get(i).copied().unwrap_or(false)))
        } else {
            codec::decode_registers(f, regs.get(i * w..).unwrap_or(&[]))
        };
        values.push(match v {
            Ok(v) => v.to_json(),
            // NaN and infinity are what the device holds; show them rather than fail.
            Err(codec::CodecError::NotFinite(x)) => serde_json::Value::String(x.to_string()),
            Err(e) => {
                eprintln!("error: value {i}: {e}");
                return Err(EXIT_EXCEPTION);
            }
        });
    }
    Ok(values)
}

/// `write`: FC 5 for a coil (FC 15 for a list of coils), 6 for one register, 16 for wider types.
pub async fn write(t: Target, value: &str) -> i32 {
    let op = match t.table {
        Table::Coil => {
            // One value: FC 5. A comma-separated list: FC 15 from --address on.
            let bits: Option<Vec<bool>> = value.split(',').map(codec::parse_bool).collect();
            match bits {
                Some(b) if b.len() == 1 => WriteOp::Coil(b[0]),
                Some(b) if b.len() <= 1968 => WriteOp::Coils(b),
                _ => {
                    eprintln!("error: a coil takes true/false or 1/0 (or a comma-separated list of up to 1968), not `{value}`");
                    return EXIT_USAGE;
                }
            }
        }
        Table::Holding => match codec::encode_registers(&t.format, &Value::Text(value.to_string()))
        {
            Ok(r) if r.len() == 1 => WriteOp::Register(r[0]),
            Ok(r) => WriteOp::Registers(r),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        },
        other => {
            eprintln!("error: a {other} table cannot be written (coil or holding only)");
            return EXIT_USAGE;
        }
    };
    let mut l = link::Link::new(t.link.clone(), t.timeout, Duration::ZERO);
    match l.write(t.unit, t.address, op).await {
        Ok(Ok(())) => {
            println!("ok");
            EXIT_OK
        }
        Ok(Err(code)) => {
            eprintln!(
                "error: device answered exception 0x{:02X}: {code}",
                code.code()
            );
            EXIT_EXCEPTION
        }
        Err(e) => link_exit(&e),
    }
}

/// `hash-password`: an argon2id PHC string for `[[users]]`.
pub use crate::api::auth::hash_password;

/// The demo's embedded config; `demo` points its bus at the in-process simulator.
pub use config::DEMO as DEMO_CONFIG;

/// The demo config with the simulator's address, the data dir and the listen address filled in.
pub fn demo_config(sim_addr: std::net::SocketAddr, data: PathBuf, listen: &str) -> config::Config {
    let mut c = config::parse(DEMO_CONFIG)
        .unwrap_or_else(|e| panic!("embedded demo config is invalid: {e:?}"))
        .config;
    for b in &mut c.buses {
        b.link = Link::Tcp {
            address: sim_addr.to_string(),
        };
    }
    c.gateway.data_dir = data;
    c.http.listen = listen.to_string();
    c
}

/// The demo's config as a file in its data directory, comments kept, pointed at the simulator:
/// the dashboard's Configure view edits it as it would a real box's. Written afresh at every
/// start (the simulator's port changes); the versions of a session stay in the data directory.
fn write_demo_config(
    sim_addr: std::net::SocketAddr,
    data: &std::path::Path,
    listen: &str,
    tls: bool,
) -> anyhow::Result<PathBuf> {
    let mut doc: toml_edit::DocumentMut = DEMO_CONFIG.parse()?;
    doc["gateway"]["data_dir"] = toml_edit::value(data.display().to_string());
    doc["http"]["listen"] = toml_edit::value(listen);
    if tls {
        doc["http"]["tls"] = toml_edit::value("self_signed");
    }
    if let Some(buses) = doc["buses"].as_array_of_tables_mut() {
        for b in buses.iter_mut() {
            b["address"] = toml_edit::value(sim_addr.to_string());
        }
    }
    std::fs::create_dir_all(data)?;
    let path = data.join("gateway.toml");
    config::versions::write_atomically(&path, doc.to_string().as_bytes())?;
    Ok(path)
}

/// `demo`: the simulator and the gateway in one process, until Ctrl-C or SIGTERM; plain HTTP
/// unless `tls` (a self-signed certificate in the data directory).
pub async fn demo(
    listen: &str,
    data: PathBuf,
    tls: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sim = Simulator::new(Profile::Demo);
    let sim_addr = simulator::spawn_tcp(sim, "127.0.0.1:0", shutdown.child_token()).await?;
    let path = write_demo_config(sim_addr, &data, listen, tls)?;
    let config = config::load(&path)
        .map_err(|e| anyhow::anyhow!("the demo's config: {e:?}"))?
        .config;
    crate::run_with(config, Some(path.clone()), shutdown, |gw| {
        demo_banner(gw, sim_addr, &data, &path, tls);
    })
    .await?;
    Ok(())
}

fn demo_banner(
    gw: &crate::Gateway,
    sim_addr: std::net::SocketAddr,
    data: &std::path::Path,
    path: &std::path::Path,
    tls: bool,
) {
    let urls = crate::http::urls(gw.http_addr, tls);
    println!("edge-gateway demo");
    for url in &urls {
        println!("  dashboard:  {url}");
    }
    let url = &urls[0];
    println!("  health:     {url}healthz");
    println!("  metrics:    {url}metrics");
    println!("  logins:     admin/admin (admin), viewer/viewer (viewer)");
    println!("  simulator:  modbus tcp {sim_addr} (units 1 boiler, 2 pump, 3 meter)");
    println!("  data:       {}", data.display());
    println!(
        "  config:     {} (the dashboard's Configure view edits it)",
        path.display()
    );
    if !gw.http_addr.ip().is_loopback() {
        eprintln!();
        eprintln!(
            "WARNING: the demo listens on {} with the well-known logins admin/admin and",
            gw.http_addr
        );
        eprintln!(
            "WARNING: viewer/viewer. Anyone on this network can log in and write to devices."
        );
        eprintln!();
    }
    println!("Press Ctrl-C to stop.");
}

/// `cert show`: the dashboard certificate's file and SHA-256 fingerprint. Exit 0, or 1 with
/// why there is none (TLS off, not made yet, unreadable).
pub fn cert_show(path: &std::path::Path) -> i32 {
    let config = match config::load(path) {
        Ok(l) => l.config,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return 1;
        }
    };
    let Some((cert, _)) = crate::tls::server::paths(&config) else {
        eprintln!(
            "[http] tls is off in {}: the dashboard is plain HTTP",
            path.display()
        );
        return 1;
    };
    if config.http.tls == config::HttpTls::SelfSigned && !cert.exists() {
        eprintln!(
            "no certificate yet: the gateway makes {} at its first start",
            cert.display()
        );
        return 1;
    }
    match crate::tls::server::fingerprint_of(&cert) {
        Ok(fp) => {
            println!("certificate {}", cert.display());
            println!("SHA-256     {fp}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{address_from_args, with_default_port};

    #[test]
    fn addresses_take_decimal_hex_and_modicon_references() {
        assert_eq!(
            address_from_args("2", Some("holding")),
            Ok((2, "holding".into()))
        );
        assert_eq!(
            address_from_args("0x0002", Some("input")),
            Ok((2, "input".into()))
        );
        assert_eq!(address_from_args("40003", None), Ok((2, "holding".into())));
        assert_eq!(
            address_from_args("30001", Some("input")),
            Ok((0, "input".into()))
        );
        assert_eq!(address_from_args("400001", None), Ok((0, "holding".into())));
        assert_eq!(address_from_args("00001", None), Ok((0, "coil".into())));
        // Not a reference (no table digit, or number 0): a plain address.
        assert_eq!(
            address_from_args("20000", Some("holding")),
            Ok((20000, "holding".into()))
        );
        assert_eq!(
            address_from_args("40000", Some("holding")),
            Ok((40000, "holding".into()))
        );
        let e = address_from_args("40003", Some("input")).unwrap_err();
        assert!(e.contains("0x9C43"), "{e}");
        assert!(address_from_args("70000", Some("holding")).is_err());
        assert!(address_from_args("2", None).is_err());
    }

    #[test]
    fn a_tcp_host_without_port_is_on_502() {
        assert_eq!(with_default_port("plc".into()), "plc:502");
        assert_eq!(with_default_port("10.0.0.5:5020".into()), "10.0.0.5:5020");
        assert_eq!(with_default_port("[::1]:5020".into()), "[::1]:5020");
        assert_eq!(with_default_port("::1".into()), "[::1]:502");
    }
}
