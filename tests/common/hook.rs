//! A webhook receiver for the notification tests: a plain HTTP/1.1 server that checks each
//! POST's `X-Edge-Signature` with its own HMAC (ring), keeps what arrived, and answers as told
//! (200, 500, a redirect to itself, or never); and an SMTP server that hangs up mid-DATA.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The boiler of the notification tests: its setpoint in °C (unit 1 of the demo simulator).
pub const BOILER_C: &str = r#"
[[devices]]
id = "boiler"
bus = "b"
unit = 1
poll_interval_ms = 100
points = [
  { id = "setpoint", table = "holding", address = 2, type = "u16", scale = 0.1, unit = "°C" },
]
"#;

/// Its emergency: the setpoint above 90 °C, cleared below 85.
pub const SETPOINT_HIGH: &str = r#"
[[rules]]
id = "setpoint-high"
device = "boiler"
point = "setpoint"
kind = "above"
threshold = 90.0
clear = 85.0
priority = "emergency"
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    Fail,
    Redirect,
    Hang,
}

#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub id: String,
    /// The signature header was there and matched the body.
    pub signed: bool,
    pub body: Json,
    pub answered: u16,
}

#[derive(Clone)]
pub struct Hook {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub mode: Arc<Mutex<Mode>>,
}

impl Hook {
    pub async fn start(secret: &'static str) -> Hook {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = Hook {
            addr: l.local_addr().unwrap(),
            got: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
        };
        let h = hook.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, secret, h.clone()));
            }
        });
        hook
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    /// What arrived on `path` so far.
    pub fn on(&self, path: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect()
    }

    /// Waits (20 s at most) for a message on `path` that `pred` accepts.
    pub async fn wait(&self, path: &str, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        for _ in 0..400 {
            if let Some(g) = self.on(path).into_iter().find(|g| pred(g)) {
                return g;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {what} on {path} within 20 s: {:#?}", self.on(path));
    }
}

async fn serve(s: TcpStream, secret: &str, hook: Hook) {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let (mut length, mut id, mut signature) = (0usize, String::new(), String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        let v = v.trim().to_string();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.parse().unwrap_or(0),
            "x-edge-event-id" => id = v,
            "x-edge-signature" => signature = v,
            _ => {}
        }
    }
    let mut body = vec![0; length];
    if r.read_exact(&mut body).await.is_err() {
        return;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let expected = ring::hmac::sign(&key, &body)
        .as_ref()
        .iter()
        .fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
    let mode = *hook.mode.lock().unwrap();
    let answered = match mode {
        Mode::Ok => 200,
        Mode::Fail => 500,
        Mode::Redirect => 302,
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
    };
    hook.got.lock().unwrap().push(Got {
        path: path.clone(),
        id,
        signed: signature == format!("sha256={expected}"),
        body: serde_json::from_slice(&body).unwrap_or(Json::Null),
        answered,
    });
    let location = if mode == Mode::Redirect {
        format!("Location: {}\r\n", hook.url(&path))
    } else {
        String::new()
    };
    let _ = r
        .get_mut()
        .write_all(
            format!(
                "HTTP/1.1 {answered} X\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
}

/// An SMTP server that takes a message up to DATA, reads a little of it and hangs up; returns
/// its port and how many times it did.
pub async fn smtp_closing_mid_data() -> (u16, Arc<Mutex<u32>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let cut = Arc::new(Mutex::new(0));
    let c = cut.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let _ = r.get_mut().write_all(b"220 fake ESMTP\r\n").await;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-fake\r\n250 8BITMIME\r\n",
                        "DATA" => b"354 go on\r\n",
                        _ => b"250 ok\r\n",
                    };
                    let _ = r.get_mut().write_all(answer).await;
                    if verb == "DATA" {
                        let mut some = [0u8; 16];
                        let _ = r.read(&mut some).await;
                        *c.lock().unwrap() += 1;
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    (port, cut)
}

/// A counter of the Prometheus text, by its name with labels; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
