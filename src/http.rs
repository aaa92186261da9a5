//! The HTTP listener: `/ws`, `/healthz`, `/metrics`, and the dashboard's files.

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::fair::FairShare;
use crate::log_limit::{suppressed, LogLimit};
use crate::state;
use crate::ws::Shared;

type AppState = Arc<Shared>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // `/` and `/app/…`: the dashboard's embedded files.
        .fallback(get(dashboard))
        .with_state(state)
}

/// The dashboard's files, only by a name this box may be reached by (a DNS-rebinding page
/// gets 403). `/healthz` and `/metrics` answer by any name: monitoring reaches them by
/// whatever name it knows, and they hold no session.
async fn dashboard(
    State(s): State<AppState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if !s.admission.host_allowed(&s.config.http, &headers) {
        return (StatusCode::FORBIDDEN, "host not allowed\n").into_response();
    }
    crate::assets::serve(uri, headers).await
}

/// SPEC: 200 while serving, 503 with `"status":"failing"` when the store cannot write; what
/// is degraded is listed either way ([`crate::health`]).
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let (ok, body) = crate::health::report(&s);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut text = s.metrics.render();
    let live = state::read(&s.live);
    let _ = write!(
        text,
        "# TYPE edge_devices_online gauge\nedge_devices_online {}\n",
        live.online_count()
    );
    let (db, wal) = crate::store::file_sizes(&s.config.gateway.data_dir);
    let _ = write!(
        text,
        "# TYPE edge_store_bytes gauge\nedge_store_bytes{{file=\"db\"}} {db}\nedge_store_bytes{{file=\"wal\"}} {wal}\n"
    );
    let _ = write!(
        text,
        "# TYPE edge_store_written_bytes_total counter\nedge_store_written_bytes_total {}\n",
        s.metrics.written_bytes()
    );
    let pending = s.admission.pending();
    let clients = s.metrics.push.clients.load(Relaxed);
    // Logged in now: a socket whose session ended (logout, expiry) is neither.
    let authenticated = s.hub.logged_in();
    let _ = write!(
        text,
        "# TYPE edge_ws_clients gauge\nedge_ws_clients {clients}\n\
         edge_ws_clients{{state=\"authenticated\"}} {authenticated}\nedge_ws_clients{{state=\"pending\"}} {pending}\n",
    );
    text.push_str("# TYPE edge_ws_rejected_total counter\n");
    for (reason, n) in s.admission.rejected() {
        let _ = writeln!(
            text,
            "edge_ws_rejected_total{{reason=\"{}\"}} {n}",
            reason.label()
        );
    }
    let sinks = s.sinks.configured(&s.config);
    if !sinks.is_empty() {
        let (mut backlog, mut rows, mut ignored) = (String::new(), String::new(), String::new());
        for (name, m) in sinks {
            let _ = writeln!(
                backlog,
                "edge_sink_backlog{{sink=\"{name}\"}} {}",
                m.backlog.load(Relaxed)
            );
            let _ = write!(
                rows,
                "edge_sink_rows_total{{sink=\"{name}\",result=\"ok\"}} {}\n\
                 edge_sink_rows_total{{sink=\"{name}\",result=\"failed\"}} {}\n",
                m.rows_ok.load(Relaxed),
                m.rows_failed.load(Relaxed)
            );
            let _ = writeln!(
                ignored,
                "edge_sink_commands_ignored_total{{sink=\"{name}\"}} {}",
                m.commands_ignored.load(Relaxed)
            );
        }
        text.push_str("# TYPE edge_sink_backlog gauge\n");
        text.push_str(&backlog);
        text.push_str("# TYPE edge_sink_rows_total counter\n");
        text.push_str(&rows);
        text.push_str("# TYPE edge_sink_commands_ignored_total counter\n");
        text.push_str(&ignored);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Binds the HTTP socket (so the caller knows the port before anything else starts), ready
/// for tokio (non-blocking); a reload may hand the same socket on.
pub fn bind(listen: &str) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(listen)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The URLs a tablet can open for a listening address: the address itself, or when it is
/// the unspecified one (`0.0.0.0`, `::`) every non-loopback address of this box, which a
/// browser can reach (`http://0.0.0.0:8080/` cannot be opened).
pub fn urls(addr: SocketAddr) -> Vec<String> {
    if !addr.ip().is_unspecified() {
        return vec![format!("http://{addr}/")];
    }
    let mut ips = crate::host::addresses();
    ips.retain(|ip| !ip.is_loopback() && (addr.is_ipv6() || ip.is_ipv4()));
    // Link-local IPv6 needs a zone a browser bar does not take.
    ips.retain(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80));
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return vec![format!("http://127.0.0.1:{}/", addr.port())];
    }
    ips.into_iter()
        .map(|ip| format!("http://{}/", SocketAddr::new(ip, addr.port())))
        .collect()
}

/// A request's headers must arrive within this; it is also how long a kept-alive connection
/// may sit idle. A half-sent request cannot hold a connection, a reload or a stop.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At a stop or reload, how long requests in progress get to finish.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// HTTP connections (before any upgrade) one address may hold open: a browser opens about six,
/// so this fits a room of tablets behind one NAT, and one host cannot take every descriptor.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 128;

/// Serves HTTP until `cancel`: its own accept loop, so that it can bound how long a request
/// may take to arrive (hyper's header-read timeout), back off at the descriptor limit instead
/// of spinning, and stop without waiting for connections that never finish a request.
pub async fn serve(listener: TcpListener, state: AppState, cancel: CancellationToken) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(
            "http listening on {addr}: dashboard {}, metrics at /metrics",
            urls(addr).join(" ")
        ),
        Err(e) => tracing::warn!("http listening (address unknown: {e})"),
    }
    let app = router(state);
    let conns = TaskTracker::new();
    // Half the descriptors: the rest stay for WebSockets, Modbus links and the store. Past
    // it, the greediest address's oldest connection makes room (`/healthz` and `/metrics`
    // from a new address always get in), else a new connection is closed at once: it frees
    // its descriptor, where leaving it in the listen backlog would stall everyone.
    let open = FairShare::new(
        (crate::metrics::fd_limit() / 2).max(64),
        MAX_CONNECTIONS_PER_ADDRESS,
    );
    let accept_log = LogLimit::new(Duration::from_secs(60));
    let refused_log = LogLimit::new(Duration::from_secs(60));
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            // Cancel first: a connection taken after the stop began would only be reset.
            biased;
            () = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, remote) = match accepted {
            Ok(c) => {
                backoff = Duration::ZERO;
                c
            }
            // The peer gave up before we took it: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            Err(e) => {
                // Out of descriptors (EMFILE) or memory: existing connections and the store
                // keep theirs; new ones wait until some are freed.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                if let Some(held) = accept_log.allow(()) {
                    tracing::warn!(
                        "http accept failed: {e}; retrying with back-off{}",
                        suppressed(held)
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = cancel.cancelled() => break,
                }
            }
        };
        let from = remote.ip();
        let Ok(place) = open.take(from) else {
            if let Some(held) = refused_log.allow(from) {
                tracing::warn!(
                    remote = %from,
                    "http connection closed at once: too many open{}",
                    suppressed(held)
                );
            }
            drop(tcp);
            continue;
        };
        // Pushes are small frames that must leave at once: Nagle plus a client's delayed ACK
        // would hold them for tens of milliseconds.
        let _ = tcp.set_nodelay(true);
        let (app, cancel) = (app.clone(), cancel.clone());
        conns.spawn(async move {
            tokio::select! {
                () = connection(tcp, remote, app, cancel) => {}
                // A newcomer from a quieter address needed the place: closed at once.
                () = place.evicted.cancelled() => {}
            }
            drop(place);
        });
    }
    drop(listener);
    conns.close();
    let _ = tokio::time::timeout(STOP_GRACE, conns.wait()).await;
}

/// How long a connection open at a stop or reload has to take up a request already sent.
const PICK_UP: Duration = Duration::from_millis(50);

/// One HTTP/1.1 connection, upgrades included (an upgraded WebSocket lives on in its own task).
async fn connection(tcp: TcpStream, remote: SocketAddr, app: Router, cancel: CancellationToken) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = cancel.cancelled() => {
            // A request already sent but not yet read counts as idle to hyper and would be
            // reset (a `/healthz` during a reload came back empty): a moment to take it up.
            if tokio::time::timeout(PICK_UP, conn.as_mut()).await.is_ok() {
                return;
            }
            // A request in progress may finish; an idle or half-sent one is closed.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(STOP_GRACE, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `http://0.0.0.0:8090/` cannot be opened on a tablet: the box's own addresses instead.
    #[test]
    fn the_urls_printed_are_ones_a_tablet_can_open() {
        assert_eq!(
            urls("192.168.1.5:8080".parse().unwrap()),
            ["http://192.168.1.5:8080/"]
        );
        let any = urls("0.0.0.0:8090".parse().unwrap());
        assert!(!any.is_empty());
        for u in &any {
            assert!(u.ends_with(":8090/") && !u.contains("0.0.0.0"), "{u}");
        }
    }
}
