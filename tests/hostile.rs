//! Hostile input against a real gateway process: each attack of the hostile test, reproduced
//! as it was found, and what it gets now (RELIABILITY.md has the table).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A gateway process with an admin (password "pw") and the demo boiler and pump on its own
/// simulator; its HTTP port and the process.
struct Target {
    http: SocketAddr,
    child: Child,
    _sim: Child,
    _dir: tempfile::TempDir,
}

impl Target {
    async fn start(extra: &str) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let sim = free_port();
        let _sim = spawn(&["simulate", "--listen", &format!("127.0.0.1:{sim}")]);
        let http = free_port();
        let hash = edge_gateway::cli::hash_password("pw").unwrap();
        let text = format!(
            "[gateway]\nid = \"hostile\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [[users]]\nname = \"admin\"\nrole = \"admin\"\npassword_hash = \"{hash}\"\n\
             [[users]]\nname = \"viewer\"\nrole = \"viewer\"\npassword_hash = \"{hash}\"\n\
             {extra}\n{}{BOILER_AND_PUMP}",
            dir.path().join("data").display().to_string(),
            tcp_bus(&format!("127.0.0.1:{sim}")),
        );
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(&cfg, text).unwrap();
        let child = spawn(&["run", "--config", cfg.to_str().unwrap()]);
        let http: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
        wait_for_async("the gateway answers", || async {
            healthz_json(http).await.is_some()
        })
        .await;
        Target {
            http,
            child,
            _sim,
            _dir: dir,
        }
    }

    /// Peak resident memory of the gateway process so far, in MB.
    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap();
        kb / 1024.0
    }
}

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket to `/ws` from a chosen loopback source address (all of 127/8 is local).
async fn ws_from(src: IpAddr, addr: SocketAddr) -> Ws {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("ws handshake");
    ws
}

/// Replies on `ws` until `n` have come (pushes skipped), or the socket closes.
async fn replies(ws: &mut Ws, n: usize) -> Vec<Json> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let j: Json = serde_json::from_str(&t).unwrap();
                if j.get("requestId").is_some() {
                    out.push(j);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    out
}

/// Attack 3: logins sent at once, from many addresses, each ran argon2id (19 MiB): RSS went
/// from 10 MB to 1.1 GB. Now at most two checks run at a time, and each address gets no more
/// guesses than its limit however many it sends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_from_many_addresses_keeps_memory_under_64_mb() {
    let t = Target::start("").await;
    println!("peak RSS before: {:.1} MB", t.peak_rss_mb());
    let mut socks = Vec::new();
    for i in 0..50u8 {
        socks.push(ws_from(IpAddr::from([127, 0, 3, i + 1]), t.http).await);
    }
    // 50 addresses × 4 frames = 200 logins in flight at once.
    let all = futures_util::future::join_all(socks.iter_mut().map(|ws| async move {
        for i in 0..4 {
            let frame = json!({"requestId": i.to_string(), "service": "auth.login",
                               "params": {"username": "admin", "password": format!("guess{i}")}});
            ws.send(Message::Text(frame.to_string().into())).await.unwrap();
        }
        replies(ws, 4).await
    }))
    .await;
    let codes: Vec<i64> = all.iter().flatten().map(|r| r["code"].as_i64().unwrap()).collect();
    assert_eq!(codes.len(), 200, "every login answered");
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    let peak = t.peak_rss_mb();
    println!("peak RSS after 200 logins at once: {peak:.1} MB");
    assert!(peak < 64.0, "peak RSS {peak:.1} MB");
    // The right password still gets in afterwards.
    let mut ws = ws_from(IpAddr::from([127, 0, 4, 1]), t.http).await;
    let frame = json!({"requestId": "ok", "service": "auth.login",
                       "params": {"username": "admin", "password": "pw"}});
    ws.send(Message::Text(frame.to_string().into())).await.unwrap();
    let r = replies(&mut ws, 1).await;
    assert_eq!(r[0]["code"], 0, "{r:?}");
}
