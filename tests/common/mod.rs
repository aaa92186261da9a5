//! Shared test helpers: start the simulator and the gateway on port 0, wait for conditions.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub mod hook;
pub mod line;
pub mod mqtt;
pub mod opcua;
pub mod pymodbus;
pub mod target;
pub mod tls;
pub mod ws;
pub mod wsclient;

// Not every test binary uses them.
#[allow(unused_imports)]
pub use pymodbus::{pymodbus_client, python, start_pymodbus};

use edge_gateway::config;
use edge_gateway::modbus::simulator::{Profile, Simulator};
use edge_gateway::model::Quality;
use edge_gateway::state;
use edge_gateway::Gateway;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The simulator on a free loopback port, values still (no animation) so tests control them.
pub async fn start_sim(profile: Profile) -> (Simulator, SocketAddr, CancellationToken) {
    let sim = Simulator::new(profile);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(sim.clone().serve_tcp(listener, cancel.clone()));
    (sim, addr, cancel)
}

/// A gateway config: `[gateway]` with a fresh data dir, HTTP on port 0, and the given body.
pub fn config(data_dir: &std::path::Path, body: &str) -> config::Config {
    config_id("test-gw", data_dir, body)
}

/// The same with a gateway id of the test's choosing (upstream rows are keyed by it).
pub fn config_id(id: &str, data_dir: &std::path::Path, body: &str) -> config::Config {
    let text = format!(
        "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{body}",
        data_dir.display().to_string()
    );
    match config::parse(&text) {
        Ok(l) => l.config,
        Err(e) => panic!("test config invalid: {e:?}\n{text}"),
    }
}

/// A TCP bus named `b` with short timeouts, for fast fault tests.
pub fn tcp_bus(addr: &str) -> String {
    format!(
        "[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout_ms = 200\nretries = 0\n"
    )
}

/// The demo boiler (unit 1) and pump (unit 2) on bus `b`, polled every 100 ms.
pub const BOILER_AND_PUMP: &str = r#"
[[devices]]
id = "boiler"
bus = "b"
unit = 1
poll_interval_ms = 100
offline_after = 2
points = [
  { id = "temperature", table = "holding", address = 0, type = "f32" },
  { id = "setpoint", table = "holding", address = 2, type = "u16", scale = 0.1, writable = true },
  { id = "burner", table = "coil", address = 0, type = "bool", writable = true },
]

[[devices]]
id = "pump"
bus = "b"
unit = 2
poll_interval_ms = 100
offline_after = 2
points = [
  { id = "speed_setpoint", table = "holding", address = 0, type = "u16", writable = true },
  { id = "speed", table = "input", address = 0, type = "u16" },
]
"#;

/// Polls `cond` every 20 ms until it holds; panics with `what` after a generous deadline.
/// The deadline only bounds a hang: no test asserts how fast anything happened.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() <= deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_for_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() <= deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Quality of a point, by ids.
pub fn quality(gw: &Gateway, device: &str, point: &str) -> Quality {
    let (d, p) = gw.find(device, point).expect("known point");
    state::read(&gw.live).devices[d].points[p].quality
}

pub fn point(gw: &Gateway, device: &str, point: &str) -> state::PointLive {
    let (d, p) = gw.find(device, point).expect("known point");
    state::read(&gw.live).devices[d].points[p].clone()
}

pub fn online(gw: &Gateway, device: &str) -> bool {
    let d = gw
        .config
        .devices
        .iter()
        .position(|x| x.id == device)
        .unwrap();
    state::read(&gw.live).devices[d].online
}

pub fn requests(gw: &Gateway, device: &str, result: &str) -> u64 {
    let d = gw
        .config
        .devices
        .iter()
        .position(|x| x.id == device)
        .unwrap();
    let result = edge_gateway::metrics::RequestResult::parse(result).expect("a result label");
    gw.metrics.requests(d, result)
}

/// Two connected pseudo-terminals from `socat`, or `None` when socat is not installed.
pub struct PtyPair {
    pub a: String,
    pub b: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn pty_pair() -> Option<PtyPair> {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a").display().to_string();
    let b = dir.path().join("b").display().to_string();
    let child = std::process::Command::new("socat")
        .args([
            format!("pty,raw,echo=0,link={a}"),
            format!("pty,raw,echo=0,link={b}"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut pair = PtyPair {
        a,
        b,
        child,
        _dir: dir,
    };
    for _ in 0..250 {
        if std::path::Path::new(&pair.a).exists() && std::path::Path::new(&pair.b).exists() {
            return Some(pair);
        }
        if let Ok(Some(_)) = pair.child.try_wait() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = pair.child.kill();
    None
}

/// A free loopback port (for a child process or a server the test starts later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare HTTP/1.0 GET of /healthz: status line, headers and body as one string.
pub async fn healthz(addr: SocketAddr) -> String {
    http_get(addr, "/healthz").await
}

/// The same, or `None` while nothing answers whole (a reload rebuilding the listener).
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// A bare HTTP/1.0 GET: status line, headers and body as one string.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A TCP relay to a server that the test can cut (every connection dropped, new ones refused).
pub struct Relay {
    pub addr: SocketAddr,
    /// Connections relayed so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (u, g) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Relaxed) {
                    continue; // dropped at once: the connection is refused in effect
                }
                count.fetch_add(1, Relaxed);
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay {
            addr,
            accepted,
            up,
            generation,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, Relaxed);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Relaxed);
    }
}

/// A gateway process, killed when dropped.
pub struct Child(pub std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A simulator process on a port it chose itself (port 0), and that port, read from the line it
/// prints once listening: no port is picked here and handed over, so no other process can take
/// it in between.
pub fn spawn_simulator(extra: &[&str]) -> (Child, u16) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
        .arg("simulate")
        .args(extra)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let child = Child(child);
    let port = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let rest = l.split("modbus tcp on ").nth(1)?;
            rest.split(',').next()?.parse::<SocketAddr>().ok()
        })
        .expect("the simulator says where it listens")
        .port();
    // Whatever else it prints is read and dropped, so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, port)
}

/// `edge-gateway run --config CFG`, for a test to add to (environment, limits) before
/// [`spawn_gateway`]. It logs at info, which names the address it listens on.
pub fn gateway_command(cfg: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"));
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn,edge_gateway=info")
        .stdout(std::process::Stdio::null());
    cmd
}

/// Starts a gateway process whose config listens on port 0 and returns it with the address it
/// got, read off its "gateway running: …, http on ADDR" line: no port is picked here and handed
/// over, so no other process can take it in between. Its log goes on to `log` when given (the
/// lines before the address included), else is read and dropped.
pub fn spawn_gateway(
    mut cmd: std::process::Command,
    log: Option<&std::path::Path>,
) -> (Child, SocketAddr) {
    use std::io::{BufRead, Write};
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let child = Child(child);
    let mut seen = Vec::new();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let addr = l
                .split("http on ")
                .nth(1)
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            seen.push(l);
            addr
        })
        .unwrap_or_else(|| panic!("the gateway did not start: {seen:#?}"));
    let mut out = log.map(|p| std::fs::File::create(p).unwrap());
    if let Some(f) = &mut out {
        for l in &seen {
            let _ = writeln!(f, "{l}");
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if let Some(f) = &mut out {
                let _ = writeln!(f, "{l}");
            }
        }
    });
    (child, addr)
}

pub fn spawn(args: &[&str]) -> Child {
    Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A sink's backlog from a process's `/healthz`; `None` while it does not answer.
pub async fn backlog_of(http: u16, sink: &str) -> Option<i64> {
    let addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    healthz_json(addr).await?["sinks"][sink]["backlog"].as_i64()
}

/// SIGKILL: no shutdown, no flush.
pub fn unsafe_kill(c: &mut Child) {
    // std's kill() is SIGKILL on Unix.
    let _ = c.0.kill();
    let _ = c.0.wait();
}

/// A gateway id no other test run uses, so runs and tests never see each other's rows.
pub fn unique_id(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), rand::random::<u32>())
}

/// Waits until a sink has confirmed everything the store holds.
pub async fn caught_up(gw: &Gateway, sink: &str) {
    // Everything the buses reported before is committed first, events too: they reach the
    // store through the event processor, a moment after the state and the status rows a test
    // waited on. (A flush alone let an empty backlog be read before the `device_online`
    // events were written: CI saw MySQL hold none of them.)
    gw.settle().await;
    wait_for_async(&format!("{sink} backlog drained"), || async {
        gw.store.flush().await;
        let c = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
        edge_gateway::store::outbox::backlog(&c, sink, &[]).unwrap() == 0
    })
    .await;
}

/// An `info` `device_abnormal` draft, as the rule engine would make one, for feeding the event
/// processor directly.
pub fn info_draft(
    device: usize,
    priority: edge_gateway::config::Priority,
    message: &str,
    ts: i64,
) -> edge_gateway::events::Draft {
    edge_gateway::events::Draft {
        device,
        point: None,
        kind: edge_gateway::events::EventType::DeviceAbnormal,
        priority,
        value: None,
        message: message.into(),
        state: edge_gateway::events::EventState::Info,
        ts,
        alarm: None,
        at: tokio::time::Instant::now(),
    }
}

/// `/healthz` of a listener as JSON; `None` while nothing answers (a process starting, or a
/// reload rebuilding the listener).
pub async fn healthz_json(addr: SocketAddr) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    serde_json::from_str(out.split("\r\n\r\n").nth(1)?).ok()
}

/// A fake systemd: a datagram socket the gateway notifies.
pub struct Notify {
    sock: std::os::unix::net::UnixDatagram,
    pub path: std::path::PathBuf,
}

impl Notify {
    pub fn new(dir: &std::path::Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify { sock, path }
    }

    /// Messages received within `within`.
    pub fn collect(&self, within: Duration) -> Vec<String> {
        let end = std::time::Instant::now() + within;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        out
    }

    /// Throws away what is already queued: a ping sent before the window under test still sits
    /// in the socket and would be read as if it came inside it.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        self.sock.set_nonblocking(true).unwrap();
        while self.sock.recv(&mut buf).is_ok() {}
        self.sock.set_nonblocking(false).unwrap();
    }

    pub fn wait_for(&self, what: &str, within: Duration) -> Vec<String> {
        let end = std::time::Instant::now() + within;
        let mut seen = Vec::new();
        while std::time::Instant::now() < end {
            seen.extend(self.collect(Duration::from_millis(200)));
            if seen.iter().any(|m| m.contains(what)) {
                return seen;
            }
        }
        panic!("no {what} within {within:?}; got {seen:?}");
    }
}

/// A test that cannot run on this machine (a service or tool missing). Under
/// `EDGE_TEST_REQUIRE_ALL=1` (CI) that is a failure; otherwise it is said on the real stderr,
/// which libtest's capture does not hide, so a green run shows what it did not run.
pub fn skipped(why: &str) {
    assert!(
        std::env::var_os("EDGE_TEST_REQUIRE_ALL").is_none_or(|v| v != "1"),
        "{why}; EDGE_TEST_REQUIRE_ALL=1 says this run must not skip it"
    );
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// A device's `device_abnormal` events with a `link:` reason, oldest first.
pub async fn link_events(gw: &Gateway, device: &str) -> Vec<serde_json::Value> {
    gw.settle().await;
    let conn = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    let f = edge_gateway::store::EventFilter {
        device_id: Some(device.into()),
        kind: Some("device_abnormal".into()),
        limit: 1000,
        ..Default::default()
    };
    let mut v = edge_gateway::store::query_events(&conn, &gw.config, &f).unwrap();
    v.retain(|e| e["message"].as_str().is_some_and(|m| m.starts_with("link")));
    v.reverse();
    v
}

/// The audit rows of writes from `source` (`ws`, `mqtt`, `opcua`, `modbus`…), newest first,
/// once everything before was committed.
pub async fn audit_from(gw: &Gateway, source: &str) -> Vec<serde_json::Value> {
    gw.settle().await;
    let reader = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    edge_gateway::store::audit_page(&reader, &gw.config, None, 100)
        .unwrap()
        .into_iter()
        .filter(|a| a["source"] == source)
        .collect()
}
