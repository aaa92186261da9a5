//! The WebSocket tests' client and gateways: a client that keeps pushes aside while it waits
//! for a reply, the users and settings a test gateway gets, a gateway process's config head.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use edge_gateway::Gateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::Message;

use super::ws::Stream;
use super::*;

/// A test's WebSocket client: replies by `requestId`, pushes kept aside meanwhile.
pub struct Ws {
    pub s: Stream,
    pub next_id: u64,
    pub pushes: VecDeque<Json>,
}

impl Ws {
    pub async fn connect(addr: SocketAddr) -> Ws {
        let (s, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("ws connect");
        Ws {
            s,
            next_id: 1,
            pushes: VecDeque::new(),
        }
    }

    pub async fn send_text(&mut self, t: String) {
        self.s.send(Message::Text(t.into())).await.unwrap();
    }

    /// The next text frame as JSON; `None` when the server closed.
    pub async fn recv(&mut self) -> Option<Json> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.s.next())
                .await
                .expect("no frame within 30 s");
            match m {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// [`Ws::call`], or `None` when the server closes before the reply.
    pub async fn try_call(&mut self, service: &str, params: Json) -> Option<Json> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send_text(json!({"requestId": id, "service": service, "params": params}).to_string())
            .await;
        loop {
            let m = self.recv().await?;
            if m.get("requestId") == Some(&Json::String(id.clone())) {
                return Some(m);
            }
            self.pushes.push_back(m);
        }
    }

    /// Sends a request and returns its reply (pushes on the way are kept for later).
    pub async fn call(&mut self, service: &str, params: Json) -> Json {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send_text(json!({"requestId": id, "service": service, "params": params}).to_string())
            .await;
        loop {
            let m = self
                .recv()
                .await
                .expect("connection closed before the reply");
            if m.get("requestId") == Some(&Json::String(id.clone())) {
                assert_eq!(m["service"], service);
                return m;
            }
            self.pushes.push_back(m);
        }
    }

    pub async fn login(&mut self, user: &str, pw: &str) -> Json {
        self.call("auth.login", json!({"username": user, "password": pw}))
            .await
    }

    /// The next push, whatever its service.
    pub async fn next_push_any(&mut self) -> Json {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        loop {
            let m = self.recv().await.expect("closed while waiting for a push");
            if m.get("requestId").is_none() {
                return m;
            }
        }
    }

    pub async fn next_push(&mut self, service: &str) -> Json {
        if let Some(i) = self.pushes.iter().position(|p| p["service"] == service) {
            return self.pushes.remove(i).unwrap();
        }
        loop {
            let m = self.recv().await.expect("closed while waiting for a push");
            if m["service"] == service && m.get("requestId").is_none() {
                return m;
            }
        }
    }
}

pub fn code(reply: &Json) -> u64 {
    reply["code"].as_u64().unwrap()
}

/// A gateway process's config up to its devices: its data in `dir`, HTTP on port 0, the two
/// users, the simulator's bus.
pub fn process_head(dir: &std::path::Path, sim: SocketAddr) -> String {
    format!(
        "[gateway]\nid = \"g\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{}{}",
        dir.display().to_string(),
        users_and_push(""),
        tcp_bus(&sim.to_string()),
    )
}

/// Users admin/admin and viewer/viewer, and the push settings given.
pub fn users_and_push(push: &str) -> String {
    let admin = edge_gateway::cli::hash_password("admin").unwrap();
    let viewer = edge_gateway::cli::hash_password("viewer").unwrap();
    format!(
        "[[users]]\nname = \"admin\"\nrole = \"admin\"\npassword_hash = \"{admin}\"\n\
         [[users]]\nname = \"viewer\"\nrole = \"viewer\"\npassword_hash = \"{viewer}\"\n[push]\n{push}\n"
    )
}

pub async fn gateway(
    push: &str,
) -> (
    Gateway,
    edge_gateway::modbus::simulator::Simulator,
    tempfile::TempDir,
) {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    std::mem::forget(_c);
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}{}",
        users_and_push(push),
        tcp_bus(&addr.to_string()),
        BOILER_AND_PUMP
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    (gw, sim, dir)
}

/// `n` raw reads of unit 9, which the simulator does not have: each waits out the bus timeout.
pub async fn reads_of_a_silent_unit(ws: &mut Ws, n: u64) {
    for i in 0..n {
        ws.send_text(
            json!({"requestId": format!("r{i}"), "service": "registers.read",
                "params": {"bus": "b", "unit": 9, "table": "holding", "address": 0, "count": 1}})
            .to_string(),
        )
        .await;
    }
}
