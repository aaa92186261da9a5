//! The dashboard's static files: embedded in the binary (the plant LAN has no internet and the
//! build needs no npm), gzipped once on first use, served with ETags so a tablet revalidates
//! instead of downloading again.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Path, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../web/index.html"),
    ),
    (
        "/app/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/app/style.css"),
    ),
    (
        "/app/main.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/main.js"),
    ),
    (
        "/app/session.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/session.js"),
    ),
    (
        "/app/live.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/live.js"),
    ),
    (
        "/app/alarmstate.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/alarmstate.js"),
    ),
    (
        "/app/overview.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/overview.js"),
    ),
    (
        "/app/dialog.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/dialog.js"),
    ),
    (
        "/app/conn.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/conn.js"),
    ),
    (
        "/app/decode.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/decode.js"),
    ),
    (
        "/app/chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/chart.js"),
    ),
    (
        "/app/dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/dom.js"),
    ),
    (
        "/app/inspector.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/inspector.js"),
    ),
    (
        "/app/configure.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/configure.js"),
    ),
    (
        "/app/calcform.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/calcform.js"),
    ),
    (
        "/app/diagnostics.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/diagnostics.js"),
    ),
    (
        "/app/audit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/audit.js"),
    ),
    (
        "/app/users.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/users.js"),
    ),
    (
        "/app/log.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/log.js"),
    ),
    (
        "/app/alarms.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/alarms.js"),
    ),
    (
        "/app/device.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/device.js"),
    ),
    (
        "/app/shelving.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/shelving.js"),
    ),
    (
        "/app/forms.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/forms.js"),
    ),
    (
        "/app/addpoint.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/addpoint.js"),
    ),
    (
        "/app/devform.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/devform.js"),
    ),
    (
        "/app/format.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app/format.js"),
    ),
    (
        "/app/icon.svg",
        "image/svg+xml",
        include_bytes!("../web/app/icon.svg"),
    ),
];

struct Asset {
    path: &'static str,
    mime: &'static str,
    raw: &'static [u8],
    gzip: Vec<u8>,
    etag: String,
}

fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|&(path, mime, raw)| {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                let gzip = enc
                    .write_all(raw)
                    .and_then(|()| enc.finish())
                    .unwrap_or_default();
                Asset {
                    path,
                    mime,
                    raw,
                    gzip,
                    etag: format!("\"{:016x}\"", fnv1a(raw)),
                }
            })
            .collect()
    })
}

/// A content hash for the ETag, stable for the same bytes in any build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Serves an embedded file: 304 when the client's ETag matches, gzip when accepted.
pub async fn serve(uri: Uri, headers: HeaderMap) -> Response {
    let Some(a) = assets().iter().find(|a| a.path == uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let etag = HeaderValue::from_str(&a.etag).expect("hex etag");
    // Revalidate every time: a gateway upgrade must reach the tablets at once.
    let cache = HeaderValue::from_static("no-cache");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag || t.trim() == "*"));
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut resp = if gzip_ok && !a.gzip.is_empty() {
        let mut r = a.gzip.clone().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        a.raw.into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, cache);
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    resp
}
