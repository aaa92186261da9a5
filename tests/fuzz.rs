//! Fuzzing on the stable toolchain: each target mutates seed inputs (real frames, shipped
//! configs) and feeds them to the code that parses what outsiders send, for `FUZZ_SECS`
//! seconds (default 3; `.ci/run` sets 60). An input that reaches a behaviour not seen before
//! (a new reply code and message shape, a new error) joins the corpus and is mutated further:
//! coarse feedback without coverage instrumentation, which needs a nightly toolchain. A panic
//! fails the test and prints the input that caused it.
//!
//! Targets: the WebSocket envelope and every service's params; Modbus TCP and RTU answers
//! parsed against a request; any bytes a master sends the Modbus TCP server; the codec's decode and encode of every type and order; config
//! parsing.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use edge_gateway::api::context::Ctx;
use edge_gateway::config::Role;
use edge_gateway::modbus::codec::{self, ByteOrder, DataType, Format, Table, WordOrder};
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::model::Value;
use edge_gateway::ws::hub::{Client, Login};
use edge_gateway::Gateway;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value as Json};

fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// The seed of a run: random, printed, and taken from `FUZZ_SEED` to replay one.
fn rng(target: &str) -> StdRng {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{target}: FUZZ_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Values that find edges: empty, zero, the extremes of each width, signs.
const INTERESTING: [&[u8]; 10] = [
    b"",
    &[0],
    &[0xFF],
    &[0x7F],
    &[0x80],
    &[0xFF, 0xFF],
    &[0x7F, 0xFF],
    &[0x80, 0x00],
    &[0x00, 0x00, 0x00, 0x00],
    &[0xFF, 0xFF, 0xFF, 0xFF],
];

/// One to four random edits of `input`.
fn mutate(rng: &mut StdRng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let mut bytes = vec![0u8; rng.random_range(1..=8)];
                rng.fill_bytes(&mut bytes);
                out.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 16));
                out.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 16));
                let piece = out[a..b].to_vec();
                let at = rng.random_range(0..=len);
                out.splice(at..at, piece);
            }
            5 => {
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let at = rng.random_range(0..=len);
                let end = (at + v.len()).min(len);
                out.splice(at..end, v.iter().copied());
            }
            6 if !corpus.is_empty() => {
                // Crossover: a piece of another input.
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let b = rng.random_range(a..=other.len());
                    let at = rng.random_range(0..=len);
                    out.splice(at..at, other[a..b].iter().copied());
                }
            }
            7 if len > 1 => out.truncate(rng.random_range(0..len)),
            _ => {}
        }
    }
    out
}

/// The corpus and what the run found, printed at the end of each target.
struct Run {
    name: &'static str,
    corpus: Vec<Vec<u8>>,
    seen: HashSet<String>,
    execs: u64,
    started: Instant,
}

impl Run {
    fn new(name: &'static str, seeds: Vec<Vec<u8>>) -> Run {
        Run {
            name,
            corpus: seeds,
            seen: HashSet::new(),
            execs: 0,
            started: Instant::now(),
        }
    }

    fn running(&self) -> bool {
        self.started.elapsed() < budget()
    }

    fn next(&mut self, rng: &mut StdRng) -> Vec<u8> {
        self.execs += 1;
        let base = &self.corpus[rng.random_range(0..self.corpus.len())];
        mutate(rng, base, &self.corpus)
    }

    /// Keeps `input` when its outcome was not seen before.
    fn outcome(&mut self, input: Vec<u8>, outcome: String) {
        if self.seen.insert(outcome) && self.corpus.len() < 10_000 {
            self.corpus.push(input);
        }
    }

    fn report(&self) {
        println!(
            "{}: {} executions in {:.0} s, corpus {} ({} distinct outcomes), 0 crashes",
            self.name,
            self.execs,
            self.started.elapsed().as_secs_f64(),
            self.corpus.len(),
            self.seen.len()
        );
    }
}

/// Prints the input being tried if the target panics on it.
struct Witness<'a>(&'a [u8]);

impl Drop for Witness<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "input that panicked ({} bytes): {:02x?}\nas text: {:?}",
                self.0.len(),
                self.0,
                String::from_utf8_lossy(self.0)
            );
        }
    }
}

/// The first words of a message: what kind of answer it was, not what it echoes.
fn head(msg: &str) -> String {
    msg.split(['`', ':'])
        .next()
        .unwrap_or("")
        .split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ")
}

/// An outcome of a JSON reply: its code and the head of its message.
fn shape(reply: &Json) -> String {
    format!(
        "{} {}",
        reply["code"],
        head(reply["msg"].as_str().unwrap_or(""))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn the_websocket_envelope_and_every_service_take_any_input() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let hash = edge_gateway::cli::hash_password("pw").unwrap();
    let user =
        format!("[[users]]\nname = \"fuzz\"\nrole = \"admin\"\npassword_hash = \"{hash}\"\n");
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{user}{}{}", tcp_bus(&addr.to_string()), BOILER_AND_PUMP),
    ))
    .await
    .unwrap();
    wait_for("polled", || online(&gw, "boiler")).await;
    let client = Arc::new(Client::new(
        1,
        100,
        edge_gateway::config::Overflow::DropOldest,
    ));
    // A real session: the expiry sweep ends any whose token the gateway does not know.
    let (token, _) = gw
        .shared
        .auth
        .login("127.0.0.1".parse().unwrap(), "fuzz", "pw")
        .await
        .unwrap();
    *client.login.lock().unwrap() = Some(Login {
        user: "fuzz".into(),
        role: Role::Admin,
        token,
    });
    gw.shared.hub.register(client.clone());
    let seeds: Vec<Vec<u8>> = [
        json!({"requestId": "1", "service": "devices.list"}),
        json!({"requestId": 2, "service": "points.history", "params": {"deviceId": "boiler", "pointId": "setpoint", "limit": 5, "since": "2026-01-01T00:00:00Z"}}),
        json!({"service": "events.query", "params": {"deviceId": "pump", "type": "threshold", "minPriority": "high", "limit": 10}}),
        json!({"service": "alarms.active"}),
        json!({"service": "alarms.ack", "params": {"eventIds": ["test-gw-1"], "comment": "x"}}),
        json!({"service": "subscribe", "params": {"deviceIds": ["boiler"], "eventTypes": ["threshold"], "minPriority": "normal", "telemetry": false}}),
        json!({"service": "push.setInterval", "params": {"intervalMs": 1000}}),
        json!({"service": "device.write", "params": {"deviceId": "boiler", "pointId": "setpoint", "value": 65.5}}),
        json!({"service": "device.write", "params": {"deviceId": "boiler", "pointId": "burner", "value": "true"}}),
        json!({"service": "registers.read", "params": {"deviceId": "pump", "table": "holding", "address": 0, "count": 2}}),
        json!({"service": "devices.describe"}),
        json!({"service": "system.stats"}),
        json!({"service": "auth.resume", "params": {"token": "abc"}}),
    ]
    .iter()
    .map(|j| j.to_string().into_bytes())
    .collect();
    let mut run = Run::new("websocket", seeds);
    let mut rng = rng(run.name);
    while run.running() {
        let input = run.next(&mut rng);
        let _w = Witness(&input);
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        let outcome = match edge_gateway::api::context::parse(text) {
            Err(reply) => shape(&reply),
            Ok(req) => {
                // auth.login runs argon2 (50 ms): its params are checked like every other's
                // without paying for the hash each time.
                if req.service == "auth.login" || req.service == "auth.logout" {
                    continue;
                }
                let ctx = Ctx {
                    shared: gw.shared.clone(),
                    client: client.clone(),
                    remote: "127.0.0.1".parse().unwrap(),
                    params: req.params,
                    later: edge_gateway::api::context::Later::default(),
                };
                let result = edge_gateway::api::services::dispatch(&req.service, ctx).await;
                let reply =
                    edge_gateway::api::context::reply(&req.request_id, Some(&req.service), result);
                // The service names only a known service's outcome (an unknown name is 404).
                let known = !shape(&reply).starts_with("404 unknown service");
                let service = if known { req.service.as_str() } else { "?" };
                format!("{service} {}", shape(&reply))
            }
        };
        run.outcome(input.clone(), outcome);
    }
    run.report();
    // Still serving after all that.
    let r = edge_gateway::api::services::dispatch(
        "devices.list",
        Ctx {
            shared: gw.shared.clone(),
            client,
            remote: "127.0.0.1".parse().unwrap(),
            params: serde_json::Map::default(),
            later: edge_gateway::api::context::Later::default(),
        },
    )
    .await;
    assert!(r.is_ok());
    drop(sim);
    gw.shutdown().await;
}

/// Answers for a read of 3 holding registers at 0 from unit 1, as a device might mangle them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_and_rtu_answers_are_parsed_against_their_request() {
    use edge_gateway::modbus::codec::Table;
    use edge_gateway::modbus::reply::LinkError;
    use edge_gateway::modbus::rtu::{LineTiming, Rtu};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_modbus::client::Reader;
    use tokio_modbus::Slave;
    let good_pdu = [0x03u8, 0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x03];
    let seeds = vec![
        edge_gateway::modbus::frame::mbap_frame(1, 1, &good_pdu),
        edge_gateway::modbus::frame::mbap_frame(1, 1, &[0x83, 0x02]),
        edge_gateway::modbus::frame::rtu_frame(1, &good_pdu),
        edge_gateway::modbus::frame::rtu_frame(1, &[0x83, 0x02]),
    ];
    let mut run = Run::new("modbus answers", seeds);
    let mut rng = rng(run.name);
    while run.running() {
        let input = run.next(&mut rng);
        let _w = Witness(&input);
        // Each transport reads the same bytes as its answer: an in-memory pipe, no sockets.
        // TCP is tokio-modbus's client, RTU the gateway's own framing.
        for rtu in [false, true] {
            let (client, mut server) = tokio::io::duplex(4096);
            let answer = input.clone();
            let device = tokio::spawn(async move {
                let mut req = [0u8; 64];
                let _ = server.read(&mut req).await;
                let _ = server.write_all(&answer).await;
                // Then the end of the stream: a short answer ends in an error, not a wait.
            });
            let outcome = if rtu {
                let mut line = Rtu::new(Box::new(client), LineTiming::NONE);
                match line
                    .read(1, Table::Holding, 0, 3, Duration::from_millis(500))
                    .await
                {
                    Err(LinkError::Timeout(_)) => "timeout".to_string(),
                    Err(e) => format!("rtu error {}", head(&e.to_string())),
                    Ok(Err(x)) => format!("rtu exception {x}"),
                    Ok(Ok(_)) => "rtu ok".to_string(),
                }
            } else {
                let mut ctx = tokio_modbus::client::tcp::attach_slave(client, Slave(1));
                let r = tokio::time::timeout(
                    Duration::from_millis(500),
                    ctx.read_holding_registers(0, 3),
                )
                .await;
                match r {
                    Err(_) => "timeout".to_string(),
                    Ok(Err(e)) => format!("tcp error {}", head(&e.to_string())),
                    Ok(Ok(Err(x))) => format!("tcp exception {x:?}"),
                    Ok(Ok(Ok(regs))) => format!("tcp ok {}", regs.len()),
                }
            };
            device.abort();
            run.outcome(input.clone(), outcome);
        }
    }
    run.report();
}

/// Whatever a master sends the Modbus TCP server, over an in-memory stream: answered (each
/// answer's function byte and exception code are the outcome) or closed, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modbus_servers_requests_take_any_bytes() {
    use edge_gateway::modbus::frame::mbap_frame;
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let server = "[modbus_server]\nenabled = true\nlisten = \"127.0.0.1:0\"\nallow_writes = true\n\
        [[modbus_server.units]]\nunit = 1\ndevice = \"boiler\"\n\
        [[modbus_server.units]]\nunit = 2\ndevice = \"pump\"\nlayout = \"float32\"\n";
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{BOILER_AND_PUMP}{server}", tcp_bus(&addr.to_string())),
    ))
    .await
    .unwrap();
    wait_for("polled", || online(&gw, "boiler") && online(&gw, "pump")).await;
    let seeds = vec![
        mbap_frame(1, 1, &[3, 0, 0, 0, 4]),
        mbap_frame(2, 2, &[4, 0, 0, 0, 4]),
        mbap_frame(3, 1, &[1, 0, 0, 0, 1]),
        mbap_frame(4, 1, &[6, 0, 2, 0, 0x2A]),
        mbap_frame(5, 1, &[0x10, 0, 2, 0, 1, 2, 0, 0x2B]),
        mbap_frame(6, 1, &[0x0F, 0, 0, 0, 1, 1, 1]),
        mbap_frame(7, 2, &[0x10, 0, 0, 0, 2, 4, 0x42, 0x20, 0, 0]),
        [
            mbap_frame(8, 1, &[5, 0, 0, 0xFF, 0]),
            mbap_frame(9, 3, &[3, 0, 0, 0, 1]),
        ]
        .concat(),
    ];
    let server = gw.modbus_server().expect("the server runs");
    let peer: std::net::SocketAddr = "127.0.0.1:50200".parse().unwrap();
    let mut run = Run::new("modbus server requests", seeds);
    let mut rng = rng(run.name);
    while run.running() {
        let input = run.next(&mut rng);
        let _w = Witness(&input);
        let (client, stream) = tokio::io::duplex(8192);
        let (mut from, mut to) = tokio::io::split(client);
        let sent = input.clone();
        let writer = tokio::spawn(async move {
            let _ = to.write_all(&sent).await;
            let _ = to.shutdown().await;
        });
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = from.read_to_end(&mut out).await;
            out
        });
        let done = edge_gateway::modbus_server::serve_stream(stream, peer, server).await;
        let _ = writer.await;
        let answers = reader.await.unwrap();
        // Each answer's function byte and, for an exception, its code.
        let mut shape = String::from(if done { "done" } else { "closed" });
        let mut at = 0;
        while at + 7 < answers.len() {
            let len = usize::from(u16::from_be_bytes([answers[at + 4], answers[at + 5]]));
            let fc = answers[at + 7];
            let code = if fc & 0x80 != 0 {
                answers.get(at + 8).copied()
            } else {
                None
            };
            let _ = match code {
                Some(c) => write!(shape, " {fc:02x}:{c:02x}"),
                None => write!(shape, " {fc:02x}"),
            };
            at += 6 + len;
        }
        run.outcome(input.clone(), shape);
    }
    run.report();
    drop(sim);
    gw.shutdown().await;
}

#[test]
fn the_codec_decodes_and_encodes_any_registers_in_every_type_and_order() {
    use DataType::*;
    let types = [Bool, U16, I16, U32, I32, U64, I64, F32, F64, String];
    let mut run = Run::new(
        "codec",
        vec![vec![0; 8], vec![0xFF; 8], vec![0x7F, 0xC0, 0, 0]],
    );
    let mut rng = rng(run.name);
    while run.running() {
        let input = run.next(&mut rng);
        let _w = Witness(&input);
        let regs: Vec<u16> = input
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
            .collect();
        let data_type = types[rng.random_range(0..types.len())];
        let f = Format {
            table: Table::Holding,
            data_type,
            length: rng.random_range(0..12),
            bit: rng.random_bool(0.2).then(|| rng.random_range(0..20)),
            byte_order: if rng.random() {
                ByteOrder::Big
            } else {
                ByteOrder::Little
            },
            word_order: if rng.random() {
                WordOrder::Big
            } else {
                WordOrder::Little
            },
            scale: [1.0, 0.1, -2.5, 1e-300, 1e300][rng.random_range(0..5)],
            offset: [0.0, -40.0, 1e308][rng.random_range(0..3)],
        };
        let decoded = codec::decode_registers(&f, &regs);
        let outcome = match &decoded {
            Ok(v) => format!("{data_type:?} ok {}", matches!(v, Value::Float(_))),
            Err(e) => format!(
                "{data_type:?} {}",
                e.to_string().split(' ').next().unwrap_or("")
            ),
        };
        // What was decoded encodes again without a panic (a write of what was read).
        if let Ok(v) = decoded {
            let _ = codec::encode_registers(&f, &v);
        }
        let text = std::string::String::from_utf8_lossy(&input).to_string();
        let _ = codec::encode_registers(&f, &Value::Text(text));
        run.outcome(input.clone(), outcome);
    }
    run.report();
}

#[test]
fn config_parsing_takes_any_text() {
    let mut seeds = Vec::new();
    for dir in ["config", "tests/config/valid", "tests/config/invalid"] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "toml") {
                seeds.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut run = Run::new("config", seeds);
    let mut rng = rng(run.name);
    while run.running() {
        let input = run.next(&mut rng);
        let _w = Witness(&input);
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        let outcome = match edge_gateway::config::parse(text) {
            Ok(_) => "valid".to_string(),
            Err(edge_gateway::config::ConfigError::Invalid(p)) => {
                let first = &p[0];
                assert!(!first.message.is_empty(), "a problem without a message");
                format!(
                    "{} {}",
                    first.path.split(['.', '[']).next().unwrap_or(""),
                    head(&first.message)
                )
            }
            Err(e) => format!("{e}"),
        };
        run.outcome(input.clone(), outcome);
    }
    run.report();
}
