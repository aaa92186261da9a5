//! `bus.scan` of unit ids 1…247 at 100 ms per silent unit, on a live bus whose one configured
//! device is polled every 100 ms (#15: "< 30 s, and a configured device waits at most one
//! timeout at a time"). Printed per link kind: the scan's time against its floor (the silent
//! units' timeouts; RTU's 20 ms of quiet after a fault counts from the last byte on the line,
//! so a silent unit's timeout already holds it), and the longest gap between two reads of the
//! configured device against its limit (one probe timeout plus its poll interval). The
//! simulator answers units 1…3; the rest are silent.
//! Run: `cargo bench --bench scan` (release profile). Wire-bound: the figures are wall time.

use std::time::{Duration, Instant};

use edge_gateway::modbus::bus::ScanRequest;
use edge_gateway::modbus::codec::Table;
use edge_gateway::modbus::simulator::{self, Profile, Simulator};
use edge_gateway::Gateway;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(100);

async fn run(kind: &str, addr: std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[gateway]\nid = \"scan\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[buses]]\nname = \"b\"\nkind = \"{kind}\"\naddress = \"{addr}\"\ntimeout_ms = 1000\nretries = 0\n\
         [[devices]]\nid = \"boiler\"\nbus = \"b\"\nunit = 1\npoll_interval_ms = {}\n\
         points = [ {{ id = \"t\", table = \"holding\", address = 0, type = \"f32\" }} ]\n",
        dir.path().display().to_string(),
        POLL.as_millis()
    );
    let config = edge_gateway::config::parse(&text).unwrap().config;
    let gw = Gateway::start(config).await.unwrap();
    let read_at = || edge_gateway::state::read(&gw.live).devices[0].points[0].ts;
    while read_at() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The device's reads, watched while the scan runs: the longest wait between two of them.
    let live = gw.live.clone();
    let stop = CancellationToken::new();
    let watcher = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut last, mut longest) = (0i64, 0i64);
            while !stop.is_cancelled() {
                let ts = edge_gateway::state::read(&live).devices[0].points[0].ts;
                if ts != last {
                    if last != 0 {
                        longest = longest.max(ts - last);
                    }
                    last = ts;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            longest
        }
    });
    let (progress, mut steps) = tokio::sync::mpsc::unbounded_channel();
    let (reply, done) = tokio::sync::oneshot::channel();
    let started = Instant::now();
    gw.shared
        .control
        .scan(
            0,
            ScanRequest {
                from: 1,
                to: 247,
                table: Table::Holding,
                address: 0,
                timeout: TIMEOUT,
                progress,
                reply,
            },
        )
        .await
        .unwrap();
    let drain = tokio::spawn(async move { while steps.recv().await.is_some() {} });
    let found = done.await.unwrap().unwrap().found;
    let took = started.elapsed();
    stop.cancel();
    let longest = Duration::from_millis(watcher.await.unwrap() as u64);
    drain.abort();
    let silent = 247 - found.len() as u32;
    let floor = TIMEOUT * silent;
    let limit = TIMEOUT + POLL;
    let units: Vec<u8> = found.iter().map(|s| s.unit).collect();
    println!(
        "scan {kind:<13} 247 units in {:>5.1} s (floor {:.1} s: ratio {:.2}), found {units:?}; \
         the device's longest wait between reads {} ms (limit {} ms: ratio {:.2})",
        took.as_secs_f64(),
        floor.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64(),
        longest.as_millis(),
        limit.as_millis(),
        longest.as_secs_f64() / limit.as_secs_f64(),
    );
    gw.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cancel = CancellationToken::new();
        let sim = Simulator::new(Profile::Demo);
        let tcp = simulator::spawn_tcp(sim.clone(), "127.0.0.1:0", cancel.clone())
            .await
            .unwrap();
        let rtu = simulator::spawn_rtu_over_tcp(sim, "127.0.0.1:0", cancel.clone())
            .await
            .unwrap();
        run("tcp", tcp).await;
        run("rtu_over_tcp", rtu).await;
        cancel.cancel();
    });
}
