//! What a valid config needs of this box before it may replace the running one: HTTP and OPC
//! UA addresses it can bind and a data directory it can write. A config that validates but cannot
//! start was answered "ok" and left the next start to exit 1; now it is refused up front. And
//! the demo's well-known logins, which `run` refuses beyond loopback.

use std::path::Path;

use super::{Config, Problem, Role};

/// The problems a valid `new` config would meet at start, beside the `running` one (whose
/// address and directory are in use by this very process, so only changed ones are tried).
pub fn check(new: &Config, running: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| {
        problems.push(Problem {
            path: path.into(),
            line: None,
            message,
        });
    };
    if new.http.listen != running.http.listen {
        // Bound and let go at once: the reload binds it again. A race with another program
        // taking it in between still fails the reload, which then puts the old file back.
        if let Err(e) = std::net::TcpListener::bind(&new.http.listen) {
            problem(
                "http.listen",
                format!("cannot listen on {}: {e}", new.http.listen),
            );
        }
    }
    // The OPC UA server's port, when it is turned on or moved (the running one holds its own).
    let opcua_runs_there = running.opcua.enabled && running.opcua.listen == new.opcua.listen;
    if new.opcua.enabled && !opcua_runs_there {
        if let Err(e) = std::net::TcpListener::bind(&new.opcua.listen) {
            problem(
                "opcua.listen",
                format!("cannot listen on {}: {e}", new.opcua.listen),
            );
        }
    }
    if new.gateway.data_dir != running.gateway.data_dir {
        if let Err(e) = writable(&new.gateway.data_dir) {
            problem(
                "gateway.data_dir",
                format!(
                    "{} is not a directory the gateway can write: {e}",
                    new.gateway.data_dir.display()
                ),
            );
        }
    }
    problems
}

/// Creates the directory if need be and writes, syncs and removes a probe file in it.
fn writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".edge-gateway-write-probe");
    let result = std::fs::write(&probe, b"probe");
    let _ = std::fs::remove_file(&probe);
    result
}

/// Why `run` must not start: a user whose hash is the demo's admin/admin or viewer/viewer
/// while the dashboard listens beyond loopback, where anyone on the network could log in.
pub fn well_known_login(config: &Config) -> Option<String> {
    let demo = super::parse(super::DEMO).ok()?.config;
    let user = config.users.iter().find(|u| {
        demo.users
            .iter()
            .any(|d| d.password_hash.0 == u.password_hash.0)
    })?;
    if loopback_only(&config.http.listen) {
        return None;
    }
    Some(format!(
        "users: `{}` has the demo's well-known password and http.listen ({}) is reachable from \
         the network; set a password with `edge-gateway user add {} --role {} --config PATH`",
        user.name,
        config.http.listen,
        user.name,
        match user.role {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    ))
}

/// Whether a listen address only takes connections from this machine.
fn loopback_only(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => listen
            .rsplit_once(':')
            .is_some_and(|(host, _)| host == "localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_private() {
        assert!(loopback_only("127.0.0.1:8080"));
        assert!(loopback_only("[::1]:8080"));
        assert!(loopback_only("localhost:8080"));
        assert!(!loopback_only("0.0.0.0:8080"));
        assert!(!loopback_only("[::]:8080"));
        assert!(!loopback_only("192.168.1.10:8080"));
        assert!(!loopback_only("gw.local:8080"));
    }

    #[test]
    fn a_taken_address_and_an_unwritable_directory_are_named_by_key() {
        let running = crate::config::parse(
            "[gateway]\nid = \"gw\"\ndata_dir = \"/tmp\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap()
        .config;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut new = running.clone();
        new.http.listen = taken.local_addr().unwrap().to_string();
        new.gateway.data_dir = "/proc/no-such-dir".into();
        new.opcua.enabled = true;
        new.opcua.listen = new.http.listen.clone();
        let problems = check(&new, &running);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["http.listen", "opcua.listen", "gateway.data_dir"],
            "{problems:?}"
        );
        assert!(check(&running, &running).is_empty());
    }
}
