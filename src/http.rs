//! The HTTP listener: `/ws`, `/healthz`, `/metrics`, and the dashboard's files.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state;
use crate::Shared;

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

/// SPEC: 200 while serving, 503 with `"status":"failing"` when the store cannot write; sinks
/// that are off are absent.
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let (online, total) = {
        let live = state::read(&s.live);
        (live.online_count(), live.devices.len())
    };
    let ok = s.store.healthy.load(Relaxed);
    let mut sinks = serde_json::Map::new();
    for (name, m) in s.sinks.configured(&s.config) {
        let mut v = serde_json::json!({"backlog": m.backlog.load(Relaxed)});
        if let Some(e) = m.error() {
            v["error"] = e.into();
        }
        sinks.insert(name.into(), v);
    }
    let (db, wal) = crate::store::file_sizes(&s.config.gateway.data_dir);
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "failing" },
        "devices": {"online": online, "total": total},
        "sinks": sinks,
        "store": {"dbBytes": db, "walBytes": wal},
    });
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
    text.push_str(&format!(
        "# TYPE edge_devices_online gauge\nedge_devices_online {}\n",
        live.online_count()
    ));
    let (db, wal) = crate::store::file_sizes(&s.config.gateway.data_dir);
    text.push_str(&format!(
        "# TYPE edge_store_bytes gauge\nedge_store_bytes{{file=\"db\"}} {db}\nedge_store_bytes{{file=\"wal\"}} {wal}\n"
    ));
    text.push_str(&format!(
        "# TYPE edge_store_written_bytes_total counter\nedge_store_written_bytes_total {}\n",
        s.metrics.written_bytes()
    ));
    let pending = s.admission.pending() as i64;
    let clients = s.metrics.push.clients.load(Relaxed);
    text.push_str(&format!(
        "# TYPE edge_ws_clients gauge\nedge_ws_clients {clients}\n\
         edge_ws_clients{{state=\"authenticated\"}} {}\nedge_ws_clients{{state=\"pending\"}} {pending}\n",
        (clients - pending).max(0)
    ));
    text.push_str("# TYPE edge_ws_rejected_total counter\n");
    for (reason, n) in s.admission.rejected() {
        text.push_str(&format!(
            "edge_ws_rejected_total{{reason=\"{}\"}} {n}\n",
            reason.label()
        ));
    }
    let sinks = s.sinks.configured(&s.config);
    if !sinks.is_empty() {
        let (mut backlog, mut rows) = (String::new(), String::new());
        for (name, m) in sinks {
            backlog.push_str(&format!(
                "edge_sink_backlog{{sink=\"{name}\"}} {}\n",
                m.backlog.load(Relaxed)
            ));
            rows.push_str(&format!(
                "edge_sink_rows_total{{sink=\"{name}\",result=\"ok\"}} {}\n\
                 edge_sink_rows_total{{sink=\"{name}\",result=\"failed\"}} {}\n",
                m.rows_ok.load(Relaxed),
                m.rows_failed.load(Relaxed)
            ));
        }
        text.push_str(&format!(
            "# TYPE edge_sink_backlog gauge\n{backlog}# TYPE edge_sink_rows_total counter\n{rows}"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Binds the listener (so the caller knows the port before anything else starts) and serves
/// until cancelled.
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

pub async fn serve(listener: TcpListener, state: AppState, cancel: CancellationToken) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!("http listening on {addr:?}");
    // Pushes are small frames that must leave at once: Nagle plus a client's delayed ACK would
    // hold them for tens of milliseconds.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
    {
        tracing::error!("http server failed: {e}");
    }
}
