//! A hostile test's target: a gateway process with an admin and a viewer (password "pw") and
//! the demo boiler and pump on its own simulator, its log kept, and how it is signalled.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

/// A gateway process with an admin (password "pw") and the demo boiler and pump on its own
/// simulator; its HTTP port and the process.
pub struct Target {
    pub http: SocketAddr,
    pub child: Child,
    pub _sim: Child,
    pub _dir: tempfile::TempDir,
}

impl Target {
    pub async fn start(extra: &str) -> Target {
        Target::start_with(extra, None).await
    }

    /// With the open-file limit set to `nofile` (soft and hard) when given.
    pub async fn start_with(extra: &str, nofile: Option<u64>) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let (_sim, sim) = spawn_simulator(&[]);
        let hash = edge_gateway::cli::hash_password("pw").unwrap();
        let text = format!(
            "[gateway]\nid = \"hostile\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [[users]]\nname = \"admin\"\nrole = \"admin\"\npassword_hash = \"{hash}\"\n\
             [[users]]\nname = \"viewer\"\nrole = \"viewer\"\npassword_hash = \"{hash}\"\n\
             {extra}\n{}{BOILER_AND_PUMP}",
            dir.path().join("data").display().to_string(),
            tcp_bus(&format!("127.0.0.1:{sim}")),
        );
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join("gateway.log");
        let mut cmd = gateway_command(&cfg);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.env("RUST_LOG", "info");
        let (child, http) = spawn_gateway(cmd, Some(&log));
        wait_for_async("the gateway answers", || async {
            healthz_json(http).await.is_some()
        })
        .await;
        Target {
            http,
            child,
            _sim,
            _dir: dir,
        }
    }

    /// Lines of the gateway's log that contain `what`.
    pub fn log_lines(&self, what: &str) -> usize {
        std::fs::read_to_string(self._dir.path().join("gateway.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let text = http_get(self.http, "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in /metrics"))
    }

    /// Peak resident memory of the gateway process so far, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap();
        kb / 1024.0
    }
}

/// SIGTERM, then a clean exit within 10 s (systemd's stop timeout; a hang guard, not a timing).
pub fn stops_cleanly(t: &mut Target) {
    signal(t, "-TERM");
    let status = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            t.child.0.try_wait().unwrap()
        })
        .expect("still running 10 s after SIGTERM");
    assert!(status.success(), "{status:?}");
}

pub fn signal(t: &Target, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &t.child.0.id().to_string()])
        .status();
}
