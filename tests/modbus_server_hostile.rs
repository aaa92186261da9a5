//! The Modbus TCP server against clients that misbehave: malformed MBAP headers, wrong lengths,
//! unknown functions, half frames, 1,000 connections, clients it does not list; each answered
//! or closed and counted, the others served, the field bus polled on. And a reload that keeps
//! the server keeps its connections.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn body(sim: SocketAddr, allowed: &str, extra: &str) -> String {
    format!(
        r#"{}{BOILER_AND_PUMP}
[modbus_server]
enabled = true
listen = "127.0.0.1:0"
allowed_clients = [{allowed}]
{extra}

[[modbus_server.units]]
unit = 1
device = "boiler"
"#,
        tcp_bus(&sim.to_string())
    )
}

fn mbap(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = tid.to_be_bytes().to_vec();
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    f.push(unit);
    f.extend_from_slice(pdu);
    f
}

/// Sends `frame` and reads one answer's PDU; `None` when the server closed instead.
async fn ask(s: &mut TcpStream, frame: &[u8]) -> Option<Vec<u8>> {
    s.write_all(frame).await.ok()?;
    answer(s).await
}

async fn answer(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head))
        .await
        .expect("an answer or a close")
        .ok()?;
    let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
    let mut pdu = vec![0u8; len - 1];
    s.read_exact(&mut pdu).await.ok()?;
    Some(pdu)
}

/// Whether the server closed `s` (EOF or reset) within the wait.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

const READ_TEMP: [u8; 5] = [3, 0, 0, 0, 2];

struct Started {
    gw: Gateway,
    at: SocketAddr,
    sim: SocketAddr,
    dir: tempfile::TempDir,
}

async fn started(allowed: &str, extra: &str) -> Started {
    // The simulator serves until the test's runtime ends.
    let (_sim, sim_addr, _cancel) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body(sim_addr, allowed, extra)))
        .await
        .unwrap();
    wait_for("the boiler online", || online(&gw, "boiler")).await;
    let at = gw.modbus_server_addr().unwrap();
    Started {
        gw,
        at,
        sim: sim_addr,
        dir,
    }
}

#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one attack after another, each checked"
)]
async fn garbage_is_answered_or_closed_and_the_others_are_served() {
    let Started {
        gw, at, dir: _dir, ..
    } = started(r#""127.0.0.1/32""#, "").await;
    let mut good = TcpStream::connect(at).await.unwrap();
    let ok = ask(&mut good, &mbap(1, 1, &READ_TEMP)).await.unwrap();
    assert_eq!(ok[..2], [3, 4], "{ok:?}");

    // Framed but wrong: an exception, and the connection lives on.
    let mut s = TcpStream::connect(at).await.unwrap();
    for (pdu, want) in [
        (&[0x2B, 14, 1, 0][..], [0xAB, 1]),
        (&[0x41][..], [0xC1, 1]),
        (&[3, 0, 0, 0, 2, 9][..], [0x83, 3]),
        (&[3, 0, 0, 0, 126][..], [0x83, 3]),
        (&[3, 0xFF, 0xFF, 0, 2][..], [0x83, 2]),
        (&[0x0F, 0, 0, 0, 16, 1, 0xFF][..], [0x8F, 3]),
        (&[0x10, 0, 0, 0x80, 0, 0][..], [0x90, 3]),
        (&[6, 0, 2, 0, 1][..], [0x86, 1]),
    ] {
        assert_eq!(
            ask(&mut s, &mbap(7, 1, pdu)).await.unwrap(),
            want,
            "{pdu:?}"
        );
    }
    // Several requests in one write (pipelined): each answered in order.
    let mut two = mbap(8, 1, &READ_TEMP);
    two.extend(mbap(9, 1, &[1, 0, 0, 0, 1]));
    s.write_all(&two).await.unwrap();
    assert_eq!(answer(&mut s).await.unwrap()[0], 3);
    assert_eq!(answer(&mut s).await.unwrap()[0], 1);

    // Not Modbus TCP: closed.
    for frame in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0, 1, 0, 0, 0, 0, 1],                // length 0
        vec![0, 1, 0, 0, 0x01, 0x2C, 1, 3],       // length 300
        vec![0, 1, 0, 7, 0, 6, 1, 3, 0, 0, 0, 2], // protocol id 7
    ] {
        let mut s = TcpStream::connect(at).await.unwrap();
        s.write_all(&frame).await.unwrap();
        assert!(closed(&mut s).await, "{frame:?} was not closed");
    }
    // Half a frame left hanging: closed once the frame's time is up.
    let mut half = TcpStream::connect(at).await.unwrap();
    half.write_all(&mbap(1, 1, &READ_TEMP)[..9]).await.unwrap();
    assert!(closed(&mut half).await, "half a frame was not closed");

    // The first client never noticed.
    let ok = ask(&mut good, &mbap(2, 1, &READ_TEMP)).await.unwrap();
    assert_eq!(ok[..2], [3, 4]);
    let metrics = http_get(gw.http_addr, "/metrics").await;
    assert!(
        metrics.contains("edge_modbus_server_refused_connections_total{reason=\"garbage\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "edge_modbus_server_requests_total{unit=\"1\",function=\"0\",result=\"illegal_function\"} 2"
        ),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_thousand_connections_get_max_connections_and_polling_goes_on() {
    let Started {
        gw, at, dir: _dir, ..
    } = started(r#""127.0.0.1/32""#, "max_connections = 4").await;
    let before = requests(&gw, "boiler", "ok");
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(TcpStream::connect(at).await.unwrap());
    }
    // The first four are served; the rest were closed at accept.
    for s in held.iter_mut().take(4) {
        assert!(ask(s, &mbap(1, 1, &READ_TEMP)).await.is_some());
    }
    assert!(closed(&mut held[999]).await);
    let m = http_get(gw.http_addr, "/metrics").await;
    assert!(m.contains("edge_modbus_server_connections 4"), "{m}");
    // The Diagnostics view's figures.
    let d = edge_gateway::api::diagnostics::report(&gw.shared, true);
    let ms = &d["modbusServer"];
    assert_eq!(
        (&ms["connections"], &ms["maxConnections"], &ms["refused"]),
        (&4.into(), &4.into(), &996.into()),
        "{ms}"
    );
    assert_eq!(ms["units"][0]["device"], "boiler", "{ms}");
    assert_eq!(ms["units"][0]["requests"], 4, "{ms}");
    assert!(
        m.contains("edge_modbus_server_refused_connections_total{reason=\"full\"} 996"),
        "{m}"
    );
    drop(held);
    wait_for("the places given back", || {
        gw.metrics
            .modbus_server
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
    let mut again = TcpStream::connect(at).await.unwrap();
    assert!(ask(&mut again, &mbap(1, 1, &READ_TEMP)).await.is_some());
    wait_for("the boiler polled on", || {
        requests(&gw, "boiler", "ok") > before + 5
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_not_listed_is_closed_at_accept_and_counted() {
    let Started {
        gw, at, dir: _dir, ..
    } = started(r#""10.0.0.0/8", "192.168.1.7""#, "").await;
    let mut s = TcpStream::connect(at).await.unwrap();
    assert!(closed(&mut s).await);
    let m = http_get(gw.http_addr, "/metrics").await;
    assert!(
        m.contains("edge_modbus_server_refused_connections_total{reason=\"not_allowed\"} 1"),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_keeps_the_connection_and_answers_from_the_new_config() {
    let Started { gw, at, sim, dir } = started(r#""127.0.0.1/32""#, "").await;
    let mut s = TcpStream::connect(at).await.unwrap();
    assert_eq!(ask(&mut s, &mbap(1, 1, &READ_TEMP)).await.unwrap()[0], 3);
    // The same listen; unit 2 appears in the new config, served on the same connection.
    let mut text = body(sim, r#""127.0.0.1/32""#, "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{at}\""));
    text.push_str("\n[[modbus_server.units]]\nunit = 2\ndevice = \"pump\"\n");
    let (gw, _) = gw.reload(config(dir.path(), &text)).await.unwrap();
    assert_eq!(gw.modbus_server_addr(), Some(at));
    // The boiler's last reads carried over: answered at once, on the same connection.
    let boiler = ask(&mut s, &mbap(2, 1, &READ_TEMP)).await;
    assert_eq!(
        boiler.map(|p| p[0]),
        Some(3),
        "the same connection answers after the reload"
    );
    // The pump is new to the server: 0B until its first read, then its value.
    let mut answers = Vec::new();
    for tid in 3..500 {
        let pump = ask(&mut s, &mbap(tid, 2, &[4, 0, 0, 0, 1])).await.unwrap();
        answers.push(pump[..2].to_vec());
        if pump[0] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answers.last().map(|a| a[0]), Some(4), "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a[..] == [4, 2] || a[..] == [0x84, 0x0B]),
        "{answers:?}"
    );
    gw.shutdown().await;
}
