//! RS-485 at the physical limit (#19): 10 pymodbus slaves behind a baud-limited line (the relay
//! in `tests/common/line.rs`, 8E1, 2 ms device turnaround), each polled for 10 and for 60
//! registers as fast as the bus allows, at 9600, 19200 and 115200 baud. Printed: requests/s
//! against the line's limit for the same frames (wire time + the Modbus serial spec's
//! 3.5-character silences, 1.75 ms above 19200 baud, + the turnaround), the ratio, and the
//! shortest silence the gateway left before a request against the 3.5 characters it owes.
//! Then one of the ten dead: the others' rate, and what its probes cost under the backoff.
//! Then a realistic meter (10 fast registers, 50 slow ones with `poll_interval_ms = 60000`):
//! how often the fast ones are read, against all 60 at one rate.
//! Run: `cargo bench --bench rtu` (release profile; needs socat and pymodbus, which
//! `./scripts/test` installs: `EDGE_PYMODBUS_PYTHON`).

#[path = "../tests/common/line.rs"]
#[allow(dead_code)]
mod line;

use std::fmt::Write as _;
use std::io::BufRead;
use std::time::{Duration, Instant};

use edge_gateway::Gateway;
use line::{LineSpec, SlowLine};

const UNITS: u8 = 10;
const TIMEOUT_MS: u64 = 200;
const TURNAROUND: Duration = Duration::from_millis(2);

/// `slow_from`: registers from this one on are read once a minute (their own rate).
fn config(dir: &std::path::Path, port: &str, baud: u32, regs: u16, slow_from: u16) -> String {
    let mut c = format!(
        "[gateway]\nid = \"rtu\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[buses]]\nname = \"line\"\nkind = \"rtu\"\nport = \"{port}\"\nbaud = {baud}\n\
         parity = \"even\"\ntimeout_ms = {TIMEOUT_MS}\nretries = 0\n",
        dir.display().to_string()
    );
    let points: Vec<String> = (0..regs)
        .map(|r| {
            let rate = if r >= slow_from {
                ", poll_interval_ms = 60000"
            } else {
                ""
            };
            format!("{{ id = \"r{r}\", table = \"holding\", address = {r}, type = \"u16\"{rate} }}")
        })
        .collect();
    for u in 1..=UNITS {
        let _ = write!(
            c,
            "[[devices]]\nid = \"s{u}\"\nbus = \"line\"\nunit = {u}\npoll_interval_ms = 10\n\
             points = [\n  {}\n]\n",
            points.join(",\n  ")
        );
    }
    c
}

/// pymodbus's RTU framer on TCP, serving units 1..=10; its port.
fn pymodbus() -> (std::process::Child, std::net::SocketAddr) {
    let python =
        std::env::var("EDGE_PYMODBUS_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let mut child = std::process::Command::new(python)
        .args([
            "tests/interop/pymodbus_server.py",
            "rtu_over_tcp",
            "0",
            &format!("units={UNITS}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pymodbus (EDGE_PYMODBUS_PYTHON, or ./scripts/test --no-run to install it)");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(port) = line.trim().strip_prefix("serving rtu_over_tcp ") {
            return (child, format!("127.0.0.1:{port}").parse().unwrap());
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("pymodbus did not start");
}

struct Run {
    rate: f64,
    limit: f64,
    shortest: Duration,
    /// Requests per unit over the window.
    per_unit: Vec<u64>,
    window: Duration,
}

async fn run(
    server: std::net::SocketAddr,
    baud: u32,
    regs: u16,
    slow_from: u16,
    dead: Option<u8>,
) -> Run {
    let spec = LineSpec {
        baud,
        bits: 11,
        turnaround: TURNAROUND,
    };
    let line = SlowLine::start(spec, server).expect("socat (./scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let cfg = edge_gateway::config::parse(&config(dir.path(), &line.port, baud, regs, slow_from))
        .unwrap()
        .config;
    let gw = Gateway::start(cfg).await.unwrap();
    let all_read = || {
        let state = edge_gateway::state::read(&gw.live);
        state.devices.iter().all(|d| d.points[0].ts > 0)
    };
    while !all_read() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(u) = dead {
        line.mute(u);
        // Past its offline threshold, into the probe backoff.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let window = Duration::from_secs(if dead.is_some() { 12 } else { 6 });
    line.take_silences();
    let before: Vec<u64> = (1..=UNITS).map(|u| line.requests_to(u)).collect();
    let (n0, t0) = (line.requests(), Instant::now());
    tokio::time::sleep(window).await;
    let (n1, took) = (line.requests(), t0.elapsed());
    let per_unit = (1..=UNITS)
        .map(|u| line.requests_to(u) - before[usize::from(u - 1)])
        .collect();
    let shortest = line.take_silences().into_iter().min().unwrap_or_default();
    gw.shutdown().await;
    // Read holding registers: 8 bytes asked, 5 + 2 per register answered.
    let exchange = spec.exchange(8, 5 + 2 * u32::from(regs));
    Run {
        rate: (n1 - n0) as f64 / took.as_secs_f64(),
        limit: 1.0 / exchange.as_secs_f64(),
        shortest,
        per_unit,
        window: took,
    }
}

fn main() {
    let (mut py, server) = pymodbus();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for baud in [9600, 19200, 115200] {
            let owed = LineSpec { baud, bits: 11, turnaround: TURNAROUND }.silence();
            for regs in [10u16, 60] {
                let r = run(server, baud, regs, regs, None).await;
                println!(
                    "rtu {baud:>6} 8E1, 10 slaves x {regs:>2} registers: {:>6.1} requests/s, limit {:>6.1} (ratio {:.3}); \
                     shortest silence before a request {:.2} ms (owed {:.2} ms: ratio {:.2})",
                    r.rate,
                    r.limit,
                    r.rate / r.limit,
                    r.shortest.as_secs_f64() * 1e3,
                    owed.as_secs_f64() * 1e3,
                    r.shortest.as_secs_f64() / owed.as_secs_f64(),
                );
            }
        }
        // One slave dead: its probes (one per backoff period, each a timeout plus the 20 ms of
        // quiet after it) are all the others lose.
        for baud in [9600, 115200] {
            let alive = run(server, baud, 10, 10, None).await;
            let r = run(server, baud, 10, 10, Some(UNITS)).await;
            let probes = r.per_unit[usize::from(UNITS - 1)];
            let others: u64 = r.per_unit.iter().take(usize::from(UNITS - 1)).sum();
            let others_rate = others as f64 / r.window.as_secs_f64();
            let lost = Duration::from_millis(TIMEOUT_MS + 20) * probes as u32;
            let allowed = alive.rate * (1.0 - lost.as_secs_f64() / r.window.as_secs_f64());
            println!(
                "rtu {baud:>6} 8E1, 9 alive + 1 dead: the 9 make {others_rate:.1} requests/s \
                 (all 10 alive: {:.1}; the dead one's {probes} probes cost {:.0} ms of {:.0} s, leaving {allowed:.1}: ratio {:.3})",
                alive.rate,
                lost.as_secs_f64() * 1e3,
                r.window.as_secs_f64(),
                others_rate / allowed,
            );
        }
        // A meter's 10 fast registers beside 50 slow ones: one rate for all, or their own.
        let baud = 9600;
        let one = run(server, baud, 60, 60, None).await;
        let own = run(server, baud, 60, 10, None).await;
        let every = |r: &Run| f64::from(UNITS) / r.rate * 1e3;
        println!(
            "rtu {baud:>6} 8E1, 10 meters x (10 fast + 50 slow registers): the fast ones read every {:.0} ms \
             per meter with the slow ones at 60 s, against every {:.0} ms with all 60 at one rate: {:.1}x as often",
            every(&own),
            every(&one),
            every(&one) / every(&own),
        );
    });
    let _ = py.kill();
    let _ = py.wait();
}
