//! The benches' processes: the gateway and simulator binaries, and their figures from /proc.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bin() -> Command {
    // EDGE_GATEWAY_BIN: another build of the same code (one with symbols, for `perf`).
    Command::new(
        std::env::var("EDGE_GATEWAY_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_edge-gateway").into()),
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
pub fn pid_status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Successful Modbus requests so far, summed over devices, from /metrics.
pub fn ok_requests(port: u16) -> u64 {
    http_get(port, "/metrics")
        .lines()
        .filter(|l| l.starts_with("edge_modbus_requests_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub fn wait_for_line(child: &mut Child, needle: &str) {
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    for l in lines.by_ref() {
        if l.unwrap().contains(needle) {
            break;
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
}

/// Bytes a process caused to be written to storage (`write_bytes` of /proc/PID/io).
pub fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A counter or gauge from /metrics, summed over its series whose line contains `filter`.
pub fn metric(port: u16, name: &str, filter: &str) -> f64 {
    http_get(port, "/metrics")
        .lines()
        .filter(|l| {
            (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
                && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `edge-gateway simulate --profile PROFILE` on a free port, running once it says so.
pub fn simulator(profile: &str) -> (Proc, u16) {
    let port = free_port();
    let mut sim = Proc(
        bin()
            .args([
                "simulate",
                "--profile",
                profile,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_line(&mut sim.0, "simulator:");
    (sim, port)
}

/// `edge-gateway run --config PATH`, once its HTTP port (`http`) answers.
pub fn gateway(config: &std::path::Path, http: u16) -> Proc {
    let gw = Proc(
        bin()
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gw
}
