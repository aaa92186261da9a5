//! The Modbus TCP server under 16 masters, each reading 125 holding registers back to back:
//! the gateway (its own process, `mirror` of a device of 125 u16 points polled every 100 ms
//! from the simulator, another process) against a bare tokio-modbus server serving a static
//! table (a thread of this process, its own runtime), the same clients in the same run.
//! Printed: answers per second and the answer latency p50 / p99 / max for each, the p99 ratio
//! gateway ÷ bare (goal ≤ 1.2), and the field bus's request rate while the masters read ÷ while
//! they do not (goal 1.0: the readers cost the line nothing).
//!
//! Run: `cargo bench --bench modbus_server` (`BENCH_CLIENTS`, default 16; `BENCH_SECS`,
//! default 10 per server).

mod common;
use common::env_or;
use common::process::{free_port, gateway, metric, simulator};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_modbus::client::Reader;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, Slave, SlaveRequest};

const REGISTERS: u16 = 125;

/// A static table of 125 registers for unit 1: the least a Modbus server can do.
struct Static;

impl tokio_modbus::server::Service for Static {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let r = match req.request {
            Request::ReadHoldingRegisters(a, n) if u32::from(a) + u32::from(n) <= 125 => {
                Ok(Response::ReadHoldingRegisters((a..a + n).collect()))
            }
            Request::ReadHoldingRegisters(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        Box::pin(std::future::ready(r))
    }
}

/// The bare server on a thread of its own with a one-thread runtime, as small as it gets.
fn bare_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let server = Server::new(listener);
            let on_connected = |stream: tokio::net::TcpStream, peer| async move {
                let _ = stream.set_nodelay(true);
                accept_tcp_connection(stream, peer, |_| Ok(Some(Static)))
            };
            let _ = server.serve(&on_connected, |_| {}).await;
        });
    });
    addr
}

/// `clients` masters reading 125 registers of unit 1 back to back for `secs`: answers, and
/// each answer's latency in µs.
async fn load(addr: SocketAddr, clients: usize, secs: u64) -> (u64, Vec<u64>) {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
                .await
                .expect("connect");
            let mut mine = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let regs = ctx.read_holding_registers(0, REGISTERS).await;
                assert!(
                    matches!(&regs, Ok(Ok(r)) if r.len() == usize::from(REGISTERS)),
                    "{regs:?}"
                );
                mine.push(t.elapsed().as_micros() as u64);
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut lat = std::mem::take(&mut *lat.lock().unwrap());
    lat.sort_unstable();
    (lat.len() as u64, lat)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The field bus's answered requests so far.
fn bus_requests(http: u16) -> f64 {
    metric(http, "edge_modbus_requests_total", "result=\"ok\"")
}

fn report(name: &str, n: u64, lat: &[u64], secs: u64) -> u64 {
    let p99 = pct(lat, 0.99);
    println!(
        "{name:>8}: {:>7.0} answers/s   latency p50 {:>5} µs  p99 {:>5} µs  max {:>6} µs",
        n as f64 / secs as f64,
        pct(lat, 0.5),
        p99,
        lat[lat.len() - 1]
    );
    p99
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let clients = env_or("BENCH_CLIENTS", 16) as usize;
    let secs = env_or("BENCH_SECS", 10);
    let (_sim, sim) = simulator("demo");
    let (http, port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let points: Vec<String> = (0..REGISTERS)
        .map(|i| format!(r#"{{ id = "r{i}", table = "holding", address = {i}, type = "u16" }}"#))
        .collect();
    let config = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
         [[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{sim}\"\n\
         [[devices]]\nid = \"dev\"\nbus = \"b\"\nunit = 1\npoll_interval_ms = 100\n\
         max_registers_per_read = 125\npoints = [\n  {}\n]\n\
         [modbus_server]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
         max_connections = {}\nmax_requests_per_s = 1000000\n\
         [[modbus_server.units]]\nunit = 1\ndevice = \"dev\"\n",
        dir.path().display().to_string(),
        points.join(",\n  "),
        clients + 4,
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let _gw = gateway(&path, http);
    let gw_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Until the device's first good read the mirror answers 0B.
    let start = Instant::now();
    loop {
        let mut ctx = tokio_modbus::client::tcp::connect_slave(gw_addr, Slave(1)).await;
        if let Ok(ctx) = ctx.as_mut() {
            if matches!(ctx.read_holding_registers(0, REGISTERS).await, Ok(Ok(_))) {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the mirror never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bare = bare_server();

    // The field bus alone, then under the masters.
    let (b0, t0) = (bus_requests(http), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let idle_rate = (bus_requests(http) - b0) / t0.elapsed().as_secs_f64();

    println!("{clients} masters × {REGISTERS} holding registers back to back, {secs} s each");
    let (n, lat) = load(bare, clients, secs).await;
    let bare_p99 = report("bare", n, &lat, secs);
    let (b1, t1) = (bus_requests(http), Instant::now());
    let (n, lat) = load(gw_addr, clients, secs).await;
    let busy_rate = (bus_requests(http) - b1) / t1.elapsed().as_secs_f64();
    let gw_p99 = report("gateway", n, &lat, secs);
    println!(
        "p99 gateway ÷ bare: {:.2} (goal ≤ 1.2)",
        gw_p99 as f64 / bare_p99 as f64
    );
    println!(
        "field bus: {idle_rate:.1} requests/s without the masters, {busy_rate:.1} with them: ratio {:.2} (goal 1.0)",
        busy_rate / idle_rate
    );
}
