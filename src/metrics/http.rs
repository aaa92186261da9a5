//! The dashboard's HTTPS figures: TLS handshakes by how they ended, and plain-HTTP requests
//! sent on to https (`edge_http_tls_handshakes_total`, `edge_http_redirects_total`; none while
//! TLS is off).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// Not TLS, a protocol or certificate the client would not take, a reset.
    Failed,
    /// Not finished within the header timeout (a client that stalls).
    Timeout,
}

const HANDSHAKES: [(Handshake, &str); 3] = [
    (Handshake::Ok, "ok"),
    (Handshake::Failed, "failed"),
    (Handshake::Timeout, "timeout"),
];

#[derive(Debug, Default)]
pub struct Tls {
    pub enabled: AtomicBool,
    handshakes: [AtomicU64; 3],
    pub redirects: AtomicU64,
}

impl Tls {
    pub fn handshake(&self, h: Handshake) {
        self.handshakes[h as usize].fetch_add(1, Relaxed);
    }

    pub fn handshakes(&self, h: Handshake) -> u64 {
        self.handshakes[h as usize].load(Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        if !self.enabled.load(Relaxed) {
            return;
        }
        out.push_str("# TYPE edge_http_tls_handshakes_total counter\n");
        for (h, label) in HANDSHAKES {
            let _ = writeln!(
                out,
                "edge_http_tls_handshakes_total{{result=\"{label}\"}} {}",
                self.handshakes(h)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE edge_http_redirects_total counter\nedge_http_redirects_total {}",
            self.redirects.load(Relaxed)
        );
    }
}
