//! The HTTP listener: `/ws`, `/healthz`, `/metrics`, and the dashboard's files; with
//! `[http] tls`, HTTPS on the same port, a plain request there sent on to https.

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

use crate::api::Shared;
use crate::fair::FairShare;
use crate::log_limit::{suppressed, LogLimit};
use crate::state;
use crate::tls::server::ServerTls;

type AppState = Arc<Shared>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(crate::api::upgrade))
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
pub fn urls(addr: SocketAddr, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    if !addr.ip().is_unspecified() {
        return vec![format!("{scheme}://{addr}/")];
    }
    let mut ips = crate::host::addresses();
    ips.retain(|ip| !ip.is_loopback() && (addr.is_ipv6() || ip.is_ipv4()));
    // Link-local IPv6 needs a zone a browser bar does not take.
    ips.retain(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80));
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return vec![format!("{scheme}://127.0.0.1:{}/", addr.port())];
    }
    ips.into_iter()
        .map(|ip| format!("{scheme}://{}/", SocketAddr::new(ip, addr.port())))
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

/// The log's lines about where the dashboard is, and with which certificate.
fn announce(listener: &TcpListener, tls: Option<&ServerTls>, metrics: &crate::metrics::Metrics) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(
            "http listening on {addr}: dashboard {}, metrics at /metrics",
            urls(addr, tls.is_some()).join(" ")
        ),
        Err(e) => tracing::warn!("http listening (address unknown: {e})"),
    }
    if let Some(t) = tls {
        metrics.tls.enabled.store(true, Relaxed);
        tracing::info!(
            "https: certificate {} with SHA-256 fingerprint {}",
            t.cert_path.display(),
            t.fingerprint
        );
    }
}

/// Serves HTTP until `cancel`: its own accept loop, so that it can bound how long a request
/// may take to arrive (hyper's header-read timeout), back off at the descriptor limit instead
/// of spinning, and stop without waiting for connections that never finish a request.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<ServerTls>>,
    cancel: CancellationToken,
) {
    announce(&listener, tls.as_deref(), &state.metrics);
    let metrics = state.metrics.clone();
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
        let (app, cancel, tls, metrics) =
            (app.clone(), cancel.clone(), tls.clone(), metrics.clone());
        conns.spawn(async move {
            let served = async {
                match tls {
                    None => connection(TokioIo::new(tcp), remote, app, cancel).await,
                    Some(tls) => secure(tcp, remote, app, &tls, &metrics, cancel).await,
                }
            };
            tokio::select! {
                () = served => {}
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

/// A connection to the TLS port: the first byte tells a ClientHello (0x16) from a plain
/// request, which is answered with a redirect to https. The handshake runs in the
/// connection's own task, bounded like a request's headers: a client that stalls in it, or
/// sends garbage, holds neither the accept loop nor a reload.
async fn secure(
    tcp: TcpStream,
    remote: SocketAddr,
    app: Router,
    tls: &ServerTls,
    metrics: &crate::metrics::Metrics,
    cancel: CancellationToken,
) {
    use crate::metrics::http::Handshake;
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            metrics.tls.redirects.fetch_add(1, Relaxed);
            return redirect(tcp).await;
        }
        // Closed, or silent until the deadline: nothing to serve.
        _ => return,
    }
    match tokio::time::timeout(HEADER_TIMEOUT, tls.acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            metrics.tls.handshake(Handshake::Ok);
            connection(TokioIo::new(stream), remote, app, cancel).await;
        }
        Ok(Err(e)) => {
            metrics.tls.handshake(Handshake::Failed);
            if let Some(held) = HANDSHAKE_LOG.allow(remote.ip()) {
                tracing::info!(remote = %remote.ip(), "https: handshake failed: {e}{}", suppressed(held));
            }
        }
        Err(_) => metrics.tls.handshake(Handshake::Timeout),
    }
}

/// Failed handshakes are an outsider's doing: one line a minute per address.
static HANDSHAKE_LOG: std::sync::LazyLock<LogLimit<IpAddr>> =
    std::sync::LazyLock::new(|| LogLimit::new(Duration::from_secs(60)));

/// A plain-HTTP request on the TLS port: `308` to the same host and path over https.
async fn redirect(tcp: TcpStream) {
    let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']));
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut res = hyper::Response::new(axum::body::Body::empty());
        match host {
            Some(host) => {
                *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
                if let Ok(to) = format!("https://{host}{path}").parse() {
                    res.headers_mut().insert(header::LOCATION, to);
                }
            }
            None => *res.status_mut() = StatusCode::BAD_REQUEST,
        }
        Ok::<_, std::convert::Infallible>(res)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), service);
    let _ = tokio::time::timeout(HEADER_TIMEOUT * 2, conn).await;
}

/// One HTTP/1.1 connection, upgrades included (an upgraded WebSocket lives on in its own task).
async fn connection<I>(io: TokioIo<I>, remote: SocketAddr, app: Router, cancel: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service)
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
            urls("192.168.1.5:8080".parse().unwrap(), false),
            ["http://192.168.1.5:8080/"]
        );
        let any = urls("0.0.0.0:8090".parse().unwrap(), false);
        assert!(!any.is_empty());
        for u in &any {
            assert!(u.ends_with(":8090/") && !u.contains("0.0.0.0"), "{u}");
        }
    }
}
