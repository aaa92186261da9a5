//! The files the package ships and writes, as a first start meets them: the starter config
//! starts clean and its examples load; what the service writes keeps root's config root's.

mod common;

use std::process::{Command, Stdio};

use common::tls::https_get;
use common::*;

/// The package's starter config (#35): once `user add` has set the password it loads, and so
/// does every example block in it with its `# ` taken away; started as the daemon, it logs no
/// error and no warning but the clock's (this machine's clock may not be synchronised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_starter_config_starts_clean_and_its_examples_load() {
    let starter = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.starter.toml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hash = edge_gateway::cli::hash_password("s3cret-starter").unwrap();
    let text = starter
        .replace("CHANGE-ME", &hash)
        .replace(
            "/var/lib/edge-gateway",
            &dir.path().join("data").display().to_string(),
        )
        .replace("0.0.0.0:8080", "127.0.0.1:0");
    let l = edge_gateway::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(l.config.buses.is_empty() && l.config.mysql.is_none() && l.config.mqtt.is_none());
    let examples: String = text
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .fold(String::new(), |out, l| out + l + "\n");
    let l = edge_gateway::config::parse(&examples).unwrap_or_else(|e| panic!("{e:?}\n{examples}"));
    assert_eq!(
        (
            l.config.buses.len(),
            l.config.devices.len(),
            l.config.rules.len()
        ),
        (2, 1, 1)
    );
    assert!(l.config.mysql.is_some() && l.config.mqtt.is_some());

    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, &text).unwrap();
    let log = dir.path().join("log");
    let (gw, addr) = spawn_gateway(gateway_command(&cfg), Some(&log));
    // HTTPS with a certificate of its own, as the starter config says.
    let cert = dir.path().join("data/tls/cert.pem");
    let health = https_get(addr, "/healthz", &cert).await.unwrap();
    assert!(health.contains("\"status\""), "{health}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    drop(gw);
    let lines = std::fs::read_to_string(&log).unwrap();
    let bad: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .filter(|l| !l.contains("system clock is not synchronised"))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// What the service writes (it is not root) keeps a root-owned config root's: the text goes
/// into the file itself, not into a renamed copy the service would then own (#35). `user add`
/// runs here as `nobody` (setpriv) on a file root owns and the group may write, as under /etc.
#[test]
fn a_write_by_the_service_keeps_the_owner_of_roots_config() {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.starter.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    if std::fs::metadata(&cfg).unwrap().uid() != 0 {
        skipped("not root: the test needs a file root owns and another user to write it");
        return;
    }
    // The service may write the file and create files beside it, as the package grants.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_edge-gateway"))
        .args(["user", "add", "admin", "--role", "admin", "--config"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"service-side-pw\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&cfg).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o666),
        "owner and mode kept"
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        !text.contains("CHANGE-ME") && text.contains("$argon2id$"),
        "{text}"
    );
    assert!(
        !dir.path().join("gateway.toml.new").exists(),
        "no copy left beside it"
    );
}
