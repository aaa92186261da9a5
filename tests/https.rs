//! The dashboard over HTTPS: a certificate the box makes itself (its fingerprint in the log
//! and from `cert show`), `wss://` with a login and live values, a plain request redirected,
//! TLS 1.2+ with modern suites only (Python's ssl module, OpenSSL, as the peer we did not
//! write); and hostile clients — stalled handshakes, garbage for a ClientHello, 1,000
//! handshakes — bounded and counted, with the accept loop and a reload unblocked.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::hook::metric;
use common::tls::{https_get, make_test_ca, tls_connect};
use common::*;
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::Gateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

fn body(sim: SocketAddr) -> String {
    let admin = edge_gateway::cli::hash_password("admin").unwrap();
    format!(
        "[[users]]\nname = \"admin\"\nrole = \"admin\"\npassword_hash = \"{admin}\"\n{}{BOILER_AND_PUMP}",
        tcp_bus(&sim.to_string())
    )
}

/// Python's ssl module against the gateway: each line `name: outcome`.
fn python_probe(addr: SocketAddr, cert: &std::path::Path) -> String {
    let script = r#"
import socket, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def attempt(name, setup):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    setup(ctx)
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=host) as t:
                print(f"{name}: {t.version()} {t.cipher()[0]}")
    except Exception as e:
        print(f"{name}: refused ({type(e).__name__})")
def old(v):
    def setup(ctx):
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = v
        ctx.maximum_version = v
    return setup
attempt("default", lambda ctx: None)
attempt("tls1.0", old(ssl.TLSVersion.TLSv1))
attempt("tls1.1", old(ssl.TLSVersion.TLSv1_1))
def weak(ctx):
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES128-SHA:DES-CBC3-SHA:@SECLEVEL=0")
attempt("rsa-cbc", weak)
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn the_dashboard_is_served_over_https_with_a_certificate_the_box_made() {
    let (_sim, sim, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"tls-gw\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\ntls = \"self_signed\"\n{}",
            data.display().to_string(),
            body(sim)
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let (_gw, addr) = spawn_gateway(gateway_command(&cfg), Some(&log));
    let cert = data.join("tls/cert.pem");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is the service's alone");
    }
    // The fingerprint the log says is the one `cert show` prints.
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
        .args(["cert", "show", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(shown.status.success());
    let shown = String::from_utf8(shown.stdout).unwrap();
    let fp = shown
        .lines()
        .find_map(|l| l.strip_prefix("SHA-256"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(fp.len(), 32 * 3 - 1, "{shown}");
    wait_for("the fingerprint logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&fp)
    })
    .await;

    let health = https_get(addr, "/healthz", &cert).await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let page = https_get(addr, "/", &cert).await.unwrap();
    assert!(
        page.contains("<html") || page.contains("<!doctype"),
        "{page}"
    );
    // Plain HTTP on the same port: sent on to https, to the same host and path.
    let plain = try_http_get(addr, "/healthz").await.unwrap();
    assert!(plain.starts_with("HTTP/1.0 308"), "{plain}");
    assert!(
        plain
            .to_ascii_lowercase()
            .contains("location: https://localhost/healthz"),
        "{plain}"
    );

    // wss://: a login, then live values.
    let tls = tls_connect(addr, &cert).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/ws"), tls)
        .await
        .unwrap();
    let login = json!({"requestId": "1", "service": "auth.login",
        "params": {"username": "admin", "password": "admin"}});
    ws.send(Message::Text(login.to_string().into()))
        .await
        .unwrap();
    let mut logged_in = false;
    let snapshot = loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20 s")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let j: Json = serde_json::from_str(&t).unwrap();
        if j["requestId"] == "1" {
            assert_eq!(j["code"], 0, "{j}");
            logged_in = true;
        } else if logged_in
            && j["service"] == "push.snapshot"
            && j["data"]["devices"][0]["online"] == true
        {
            break j;
        }
    };
    assert_eq!(snapshot["data"]["devices"][0]["id"], "boiler");

    let probe = python_probe(addr, &cert);
    let line = |name: &str| {
        probe
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {probe}"))
            .to_string()
    };
    let default = line("default");
    assert!(
        default.starts_with("TLSv1.3 ") || default.starts_with("TLSv1.2 "),
        "{probe}"
    );
    assert!(
        default.contains("GCM") || default.contains("CHACHA20"),
        "{probe}"
    );
    for old in ["tls1.0", "tls1.1", "rsa-cbc"] {
        assert!(line(old).starts_with("refused"), "{old}: {probe}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_garbage_handshakes_and_a_thousand_good_ones_block_nothing() {
    let (_sim, sim, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!("tls = \"self_signed\"\n{}", body(sim));
    let config = || {
        let text = format!(
            "[gateway]\nid = \"tls-gw\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{text}",
            dir.path().display().to_string()
        );
        edge_gateway::config::parse(&text).unwrap().config
    };
    let gw = Gateway::start(config()).await.unwrap();
    let addr = gw.http_addr;
    let cert = dir.path().join("tls/cert.pem");
    // 80 clients that start a handshake and stall, 20 that connect and say nothing (an
    // address holds 128 connections at most), 50 that send garbage where the ClientHello goes,
    // from a second address: from the first, those past its 128th place would be closed at
    // accept, uncounted, whenever the gateway had not yet failed the earlier ones.
    let mut held = Vec::new();
    for i in 0..100 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i < 80 {
            s.write_all(&[0x16]).await.unwrap();
        }
        held.push(s);
    }
    for _ in 0..50 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        let _ = s.write_all(b"\x16\x03\x01\x00\x10this is no hello").await;
        held.push(s);
    }
    // Served meanwhile, the garbage counted, and a reload goes through.
    wait_for_async("the garbage counted", || async {
        let m = http_metrics(addr, &cert).await;
        metric(&m, "edge_http_tls_handshakes_total{result=\"failed\"}") >= 50.0
    })
    .await;
    let (gw, _) = gw.reload(config()).await.unwrap();
    assert!(https_get(addr, "/healthz", &cert)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    // A thousand handshakes, twenty at a time.
    let mut ok = 0;
    for _ in 0..50 {
        let round: Vec<_> = (0..20).map(|_| tls_connect(addr, &cert)).collect();
        ok += futures_util::future::join_all(round)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count();
    }
    assert_eq!(ok, 1000);
    let m = http_metrics(addr, &cert).await;
    assert!(
        metric(&m, "edge_http_tls_handshakes_total{result=\"ok\"}") >= 1000.0,
        "{m}"
    );
    drop(held);
    gw.shutdown().await;
}

async fn http_metrics(addr: SocketAddr, cert: &std::path::Path) -> String {
    https_get(addr, "/metrics", cert).await.unwrap()
}

/// `tls = "files"`: the plant's certificate, read again at a reload, so renewed files are served
/// without a restart (SIGHUP is a reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_served_after_a_reload() {
    let (_sim, sim, _c) = start_sim(Profile::Demo).await;
    let (dir, first, second) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    if !make_test_ca(first.path()) || !make_test_ca(second.path()) {
        skipped("openssl could not make a test CA");
        return;
    }
    let (cert, key) = (dir.path().join("gw.pem"), dir.path().join("gw.key"));
    let install = |from: &std::path::Path| {
        std::fs::copy(from.join("server.pem"), &cert).unwrap();
        std::fs::copy(from.join("server.key"), &key).unwrap();
    };
    install(first.path());
    let config = || {
        let text = format!(
            "[gateway]\nid = \"tls-gw\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\ntls = \"files\"\ncert = {:?}\nkey = {:?}\n{}",
            dir.path().join("data").display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            body(sim)
        );
        edge_gateway::config::parse(&text).unwrap().config
    };
    let gw = Gateway::start(config()).await.unwrap();
    let addr = gw.http_addr;
    let (ca1, ca2) = (first.path().join("ca.pem"), second.path().join("ca.pem"));
    assert!(https_get(addr, "/healthz", &ca1).await.is_ok());
    assert!(https_get(addr, "/healthz", &ca2).await.is_err());
    install(second.path());
    let (gw, _) = gw.reload(config()).await.unwrap();
    assert!(https_get(addr, "/healthz", &ca2)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    assert!(https_get(addr, "/healthz", &ca1).await.is_err());
    gw.shutdown().await;
}
