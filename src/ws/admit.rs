//! Who may open `/ws`: the Host and Origin checks (DNS rebinding), the caps on all clients and
//! on those not logged in yet (with an address's share of them), and refusals counted and
//! logged once per address per minute.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::fair::{FairShare, Full, Place};

use crate::config::Http;
use crate::log_limit::{suppressed, LogLimit};

/// Connections not logged in yet, over all addresses: they cost little each, but a flood of
/// them must never keep a technician out (they have their own cap, apart from `max_clients`).
pub const MAX_PENDING: usize = 64;
/// One address's share of [`MAX_PENDING`]: several tablets behind one NAT or proxy still fit,
/// and one host cannot take every slot.
pub const MAX_PENDING_PER_ADDRESS: usize = 16;

/// Why a connection or request was refused (`edge_ws_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Host,
    Origin,
    MaxClients,
    Pending,
    PendingPerAddress,
    /// A request over the connection's rate (429).
    Rate,
    /// Closed for not logging in within the deadline (1008).
    AuthTimeout,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Host,
        Reason::Origin,
        Reason::MaxClients,
        Reason::Pending,
        Reason::PendingPerAddress,
        Reason::Rate,
        Reason::AuthTimeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Host => "host",
            Reason::Origin => "origin",
            Reason::MaxClients => "max_clients",
            Reason::Pending => "pending",
            Reason::PendingPerAddress => "pending_per_address",
            Reason::Rate => "rate",
            Reason::AuthTimeout => "auth_timeout",
        }
    }

    fn answer(self) -> (StatusCode, &'static str) {
        match self {
            Reason::Host => (StatusCode::FORBIDDEN, "host not allowed"),
            Reason::Origin => (StatusCode::FORBIDDEN, "origin not allowed"),
            Reason::MaxClients => (StatusCode::SERVICE_UNAVAILABLE, "too many clients"),
            Reason::Pending | Reason::PendingPerAddress => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections waiting to log in; retry",
            ),
            Reason::Rate => (StatusCode::TOO_MANY_REQUESTS, "too many requests"),
            Reason::AuthTimeout => (StatusCode::UNAUTHORIZED, "login required"),
        }
    }
}

pub struct Admission {
    clients: Arc<Semaphore>,
    pending: FairShare,
    rejected: [AtomicU64; Reason::ALL.len()],
    refusals: LogLimit<IpAddr>,
    /// This box's own host name, lower case.
    hostname: Option<String>,
}

/// A connection let in: holds its place under `max_clients`, and under the pending cap until
/// it logs in ([`Admitted::logged_in`]).
pub struct Admitted {
    _client: OwnedSemaphorePermit,
    pending: Option<Place>,
    /// Cancelled when a newcomer from a quieter address took this connection's place before
    /// it logged in (see [`crate::fair`]).
    pub evicted: CancellationToken,
}

impl Admitted {
    /// Frees the connection's pending slot: it counts only under `max_clients` from now on.
    pub fn logged_in(&mut self) {
        self.pending = None;
    }
}

impl Admission {
    pub fn new(max_clients: usize) -> Admission {
        Admission {
            clients: Arc::new(Semaphore::new(max_clients)),
            pending: FairShare::new(MAX_PENDING, MAX_PENDING_PER_ADDRESS),
            rejected: Default::default(),
            refusals: LogLimit::new(Duration::from_secs(60)),
            hostname: crate::host::name(),
        }
    }

    /// Lets a connection in or says why not (the status and text to answer with).
    pub fn admit(
        &self,
        http: &Http,
        from: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Admitted, (StatusCode, &'static str)> {
        self.check(http, from, headers)
            .map_err(|reason| self.refuse(reason, from))
    }

    fn check(&self, http: &Http, from: IpAddr, headers: &HeaderMap) -> Result<Admitted, Reason> {
        if !self.host_allowed(http, headers) {
            return Err(Reason::Host);
        }
        // A request without Origin is not a browser (SPEC); a browser must come from our own
        // page, as its Host names it, or from a listed origin.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            if !origin_allowed(origin.to_str().unwrap_or(""), host, &http.allowed_origins) {
                return Err(Reason::Origin);
            }
        }
        let client = self
            .clients
            .clone()
            .try_acquire_owned()
            .map_err(|_| Reason::MaxClients)?;
        let place = self.pending.take(from).map_err(|full| match full {
            Full::Total => Reason::Pending,
            Full::Address => Reason::PendingPerAddress,
        })?;
        Ok(Admitted {
            _client: client,
            evicted: place.evicted.clone(),
            pending: Some(place),
        })
    }

    fn refuse(&self, reason: Reason, from: IpAddr) -> (StatusCode, &'static str) {
        self.rejected[reason as usize].fetch_add(1, Relaxed);
        if let Some(held) = self.refusals.allow(from) {
            tracing::warn!(
                remote = %from,
                "websocket refused: {}{}",
                reason.label(),
                suppressed(held)
            );
        }
        reason.answer()
    }

    /// Whether the request's Host is one this box may be reached by: an IP literal,
    /// `localhost`, its own name (also `.local`), or a listed one. A missing Host (HTTP/1.0) is
    /// not a browser's and passes.
    pub fn host_allowed(&self, http: &Http, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST) else {
            return true;
        };
        let Some(name) = host.to_str().ok().and_then(host_name) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        let own = self.hostname.as_deref();
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || own.is_some_and(|h| name == h || name.strip_suffix(".local") == Some(h))
            || http.allowed_hosts.contains(&name)
    }

    /// Counts a refusal made on an open connection (rate, login deadline).
    pub fn count(&self, reason: Reason) {
        self.rejected[reason as usize].fetch_add(1, Relaxed);
    }

    /// Refusals so far, by reason.
    pub fn rejected(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .into_iter()
            .map(|r| (r, self.rejected[r as usize].load(Relaxed)))
    }

    /// Free places under `max_clients`.
    pub fn free(&self) -> usize {
        self.clients.available_permits()
    }

    /// Connections not logged in yet.
    pub fn pending(&self) -> usize {
        self.pending.taken()
    }
}

/// The name or address part of a Host header: `[::1]:8080` → `::1`, `gw:8080` → `gw`.
fn host_name(host: &str) -> Option<&str> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']')?.0
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    (!name.is_empty()).then_some(name)
}

/// Whether a browser's Origin may open the socket: a listed origin, or exactly the page's own
/// (`http://` or `https://` and the Host as the browser sent it). `null`, a bare host or
/// another scheme never match.
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(host) = host else { return false };
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
            && origin[scheme.len()..].eq_ignore_ascii_case(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(hosts: &[&str], origins: &[&str]) -> Http {
        Http {
            listen: "127.0.0.1:0".into(),
            allowed_origins: origins
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            allowed_hosts: hosts.iter().map(std::string::ToString::to_string).collect(),
            tls: crate::config::HttpTls::Off,
            session_idle: std::time::Duration::from_secs(3600),
        }
    }

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_rebinding_host_is_refused_and_the_origin_must_match_with_its_scheme() {
        let a = Admission {
            hostname: Some("edge-gw".into()),
            ..Admission::new(10)
        };
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let cfg = http(&["gw3.plant.lan"], &["https://proxy.example"]);
        let ok = |host: &str, origin: Option<&str>| a.check(&cfg, ip, &headers(host, origin));
        for host in [
            "192.168.1.5:8080",
            "[::1]:8080",
            "localhost:8080",
            "EDGE-GW",
            "edge-gw.local:8080",
            "gw3.plant.lan",
        ] {
            assert!(ok(host, None).is_ok(), "{host}");
        }
        assert_eq!(ok("evil.example:18080", None).err(), Some(Reason::Host));
        assert_eq!(
            ok("evil.example:18080", Some("http://evil.example:18080")).err(),
            Some(Reason::Host)
        );
        assert!(ok("192.168.1.5:8080", Some("http://192.168.1.5:8080")).is_ok());
        assert!(ok("gw3.plant.lan", Some("https://gw3.plant.lan")).is_ok());
        assert!(ok("10.1.1.1", Some("https://proxy.example")).is_ok());
        for origin in [
            "192.168.1.5:8080",
            "null",
            "ftp://192.168.1.5:8080",
            "http://evil.example",
        ] {
            assert_eq!(
                ok("192.168.1.5:8080", Some(origin)).err(),
                Some(Reason::Origin),
                "{origin}"
            );
        }
    }

    #[test]
    fn connections_not_logged_in_have_their_own_cap_and_an_address_its_share() {
        let a = Admission::new(1000);
        let cfg = http(&[], &[]);
        let h = headers("127.0.0.1", None);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let mut held: Vec<Admitted> = (0..MAX_PENDING_PER_ADDRESS)
            .map(|_| a.check(&cfg, one, &h).unwrap())
            .collect();
        assert_eq!(
            a.check(&cfg, one, &h).err(),
            Some(Reason::PendingPerAddress)
        );
        // A login frees the slot for the next tablet behind the same address.
        held[0].logged_in();
        held.push(a.check(&cfg, one, &h).unwrap());
        let mut n = 2;
        while a.pending() < MAX_PENDING {
            held.push(a.check(&cfg, IpAddr::from([10, 0, 1, n]), &h).unwrap());
            n += 1;
        }
        // Full: a newcomer from a quiet address takes the place of the greediest address's
        // oldest connection, which is told to close (#31, item 5).
        let newcomer = a.check(&cfg, "10.0.9.9".parse().unwrap(), &h).unwrap();
        assert_eq!(a.pending(), MAX_PENDING);
        assert_eq!(held.iter().filter(|x| x.evicted.is_cancelled()).count(), 1);
        drop((held, newcomer));
        assert_eq!(a.pending(), 0);
        assert!(a.check(&cfg, one, &h).is_ok());
    }

    /// #31, item 5: four addresses × 16 sockets filled the cap and a technician got in 2 of 25
    /// tries. A fifth address gets in every time.
    #[test]
    fn a_few_greedy_addresses_cannot_keep_a_technician_out() {
        let a = Admission::new(1000);
        let cfg = http(&[], &[]);
        let h = headers("127.0.0.1", None);
        let mut held = Vec::new();
        for n in 1..=4u8 {
            for _ in 0..MAX_PENDING_PER_ADDRESS {
                held.push(a.check(&cfg, IpAddr::from([10, 0, 0, n]), &h).unwrap());
            }
        }
        assert_eq!(a.pending(), MAX_PENDING);
        for t in 0..25u8 {
            let tech = a.check(&cfg, IpAddr::from([10, 0, 5, t]), &h);
            assert!(tech.is_ok(), "try {t}: {:?}", tech.err());
            held.push(tech.unwrap());
        }
        assert_eq!(a.pending(), MAX_PENDING);
    }
}
