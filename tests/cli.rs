//! The binary's commands as a user runs them: exit codes and messages of `check-config`, `run`,
//! `read`, `write`, `hash-password`, `user add` and `--help`.

mod common;

use std::process::{Command, Stdio};

use common::*;
use edge_gateway::modbus::simulator::{Fault, Profile, PUMP};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
}

/// Runs the binary off the async runtime so the in-process simulator keeps answering.
async fn run(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = bin().args(&args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[tokio::test]
async fn check_config_lists_every_problem_with_key_path_and_line_and_exits_1() {
    let f = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/config/invalid/many_problems.toml"
    );
    let (code, _, err) = run(args(&format!("check-config --config {f}"))).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("many_problems.toml: line 79: devices[1].points[5].type: unknown type `f23`"),
        "{err}"
    );
    assert!(err.lines().count() >= 14, "{err}");
    let ok = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    let (code, out, _) = run(args(&format!("check-config --config {ok}"))).await;
    assert_eq!(code, 0);
    assert!(out.contains("ok (1 buses, 3 devices"), "{out}");
}

#[tokio::test]
async fn run_exits_64_on_an_invalid_config_before_opening_any_port() {
    let dir = tempfile::tempdir().unwrap();
    // Valid except one key; its HTTP port is held by us, so a bind attempt would fail differently.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"gw\"\ndata_dir = {:?}\n[http]\nlisten = \"{}\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n[[devices]]\nid = \"d\"\nbus = \"b\"\nunit = 0\npoints = [{{ id = \"p\", table = \"holding\", address = 0, type = \"u16\" }}]\n",
            dir.path().join("data").display().to_string(),
            held.local_addr().unwrap()
        ),
    )
    .unwrap();
    let (code, _, err) = run(vec![
        "run".into(),
        "--config".into(),
        cfg.display().to_string(),
    ])
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("devices[0].unit") && err.contains("line 13"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was opened");
    let (code, _, err) = run(args("run --config /nonexistent/gateway.toml")).await;
    assert_eq!(code, 64);
    assert!(
        err.contains("cannot read /nonexistent/gateway.toml"),
        "{err}"
    );
}

#[tokio::test]
async fn read_and_write_exit_codes_ok_exception_and_timeout() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let a = addr.to_string();
    let (code, out, _) = run(args(&format!(
        "read --tcp {a} --unit 3 --table holding --address 100 --type string --length 8"
    )))
    .await;
    assert_eq!((code, out.trim()), (0, "PM-2000-0042"));
    let (code, out, _) = run(args(&format!(
        "write --tcp {a} --unit 2 --table holding --address 0 --value 1200"
    )))
    .await;
    assert_eq!((code, out.trim()), (0, "ok"));
    let (code, out, _) = run(args(&format!(
        "read --tcp {a} --unit 2 --table holding --address 0 --count 1 --json"
    )))
    .await;
    assert_eq!((code, out.trim()), (0, r#"{"values":[1200]}"#));
    // FC 15: several coils at once.
    let (code, out, _) = run(args(&format!(
        "write --tcp {a} --unit 1 --table coil --address 10 --value 1,0,true,false,true"
    )))
    .await;
    assert_eq!((code, out.trim()), (0, "ok"));
    assert_eq!(
        sim.with_memory(1, |m| m.coils[10..15].to_vec()),
        Some(vec![true, false, true, false, true])
    );
    let (code, _, err) = run(args(&format!(
        "read --tcp {a} --unit 2 --table input --address 199 --count 2"
    )))
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("illegal data address"), "{err}");
    sim.set_fault(PUMP, Some(Fault::Silent));
    let (code, _, err) = run(args(&format!(
        "read --tcp {a} --unit 2 --table holding --address 0 --timeout-ms 200"
    )))
    .await;
    assert_eq!(code, 3);
    assert!(err.contains("timed out"), "{err}");
    let (code, _, err) = run(args(
        "write --tcp 127.0.0.1:1 --unit 2 --table coil --address 0 --value true",
    ))
    .await;
    assert_eq!(code, 3);
    assert!(err.contains("cannot connect"), "{err}");
    let (code, _, err) = run(args(&format!(
        "write --tcp {a} --unit 2 --table input --address 0 --value 1"
    )))
    .await;
    assert_eq!(code, 64);
    assert!(err.contains("cannot be written"), "{err}");
}

/// SPEC's command table, as `--help` must list it: every command on one line with what it does.
#[test]
fn help_lists_every_command_with_one_line_each() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    for name in [
        "run",
        "demo",
        "check-config",
        "simulate",
        "hash-password",
        "user",
        "read",
        "write",
    ] {
        let line = commands
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("`{name}` is not listed:\n{help}"));
        assert!(
            line.split_whitespace().count() > 2,
            "`{name}` has no description: {line}"
        );
    }
    // One line each: every line of the section starts with a command (no wrapped second lines).
    for l in &commands {
        assert!(
            l.starts_with("  ") && !l.starts_with("   "),
            "a wrapped line: {l:?}"
        );
    }
}

#[test]
fn hash_password_prints_an_argon2id_phc_string() {
    use std::io::Write;
    let mut child = bin()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.starts_with("$argon2id$v=19$"), "{s}");
    assert!(!s.contains("s3cret"));
}

/// Runs the binary with `input` on stdin: (exit code, stdout, stderr).
fn with_stdin(args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `user add` on a terminal, as a person runs it: asked twice, nothing of the password shown,
/// the terminal left as it was (a pseudo-terminal driven by `tests/interop/on_a_terminal.py`).
#[test]
fn user_add_on_a_terminal_asks_twice_and_shows_nothing_of_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nid = \"gw\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n",
    )
    .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/on_a_terminal.py"
    );
    let python = std::env::var("EDGE_PYMODBUS_PYTHON").unwrap_or_else(|_| "python3".into());
    let run = |answers: &str| {
        let out = Command::new(&python)
            .args([script, answers, env!("CARGO_BIN_EXE_edge-gateway")])
            .args(["user", "add", "tech", "--role", "viewer", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, shown) = run(r#"[["Password: ", "valve-room-12"], ["Again: ", "valve-room-13"]]"#);
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("the two passwords differ"), "{shown}");
    let (code, shown) = run(r#"[["Password: ", "valve-room-12"], ["Again: ", "valve-room-12"]]"#);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("<Password:>") && shown.contains("<Again:>"),
        "{shown}"
    );
    assert!(
        !shown.contains("valve-room"),
        "the password was echoed: {shown}"
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("name = \"tech\"") && text.contains("$argon2id$"),
        "{text}"
    );
}

/// From the shipped example to a config that loads, without an editor: `user add` sets the
/// placeholder's password, adds another user, and keeps every comment.
#[test]
fn user_add_sets_the_shipped_placeholder_and_adds_users_with_comments_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.example.toml"),
    )
    .unwrap();
    // Its own data dir: check-config does not touch it, but keep the test to itself.
    std::fs::write(&cfg, &example).unwrap();
    // As under /etc: 0640, group of the service (here group 1 when root may give it away).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
    let gid = match std::os::unix::fs::chown(&cfg, None, Some(1)) {
        Ok(()) => 1,
        Err(_) => std::fs::metadata(&cfg).unwrap().gid(),
    };
    let c = cfg.to_str().unwrap();
    let (code, _, err) = with_stdin(&["check-config", "--config", c], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("users[0].password_hash") && err.contains("user add admin"),
        "{err}"
    );

    let (code, out, err) = with_stdin(
        &["user", "add", "admin", "--role", "admin", "--config", c],
        "s3cret\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("updated user `admin`"), "{out}");
    let (code, out, _) = with_stdin(
        &["user", "add", "tech", "--role", "viewer", "--config", c],
        "other\n",
    );
    assert_eq!(code, 0);
    assert!(out.contains("added user `tech`"), "{out}");
    let (code, out, err) = with_stdin(&["check-config", "--config", c], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");

    // The service can still read it: same mode and group after the rewrite.
    let meta = std::fs::metadata(&cfg).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o640, gid));
    let text = std::fs::read_to_string(&cfg).unwrap();
    // Every comment of the example is still there, and no password in clear.
    for line in example.lines().filter(|l| l.trim_start().starts_with('#')) {
        assert!(text.contains(line), "lost: {line}");
    }
    assert!(!text.contains("s3cret") && !text.contains("CHANGE-ME"));
    // And the comments at the ends of the lines it changed.
    assert!(
        text.contains("role = \"admin\"                   # admin | viewer"),
        "{text}"
    );
    let users = edge_gateway::config::parse(&text).unwrap().config.users;
    assert_eq!(
        users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["admin", "tech"]
    );
    // A bad role is refused before anything is asked or written.
    let (code, _, err) = with_stdin(
        &["user", "add", "x", "--role", "root", "--config", c],
        "pw\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("unknown role `root`"), "{err}");
}

/// `run` will not serve the demo's admin/admin beyond loopback (exit 64, before any port is
/// opened), and says how to set a password.
#[test]
fn run_refuses_the_demos_well_known_logins_on_a_network_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    let demo = edge_gateway::cli::DEMO_CONFIG
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:0\"");
    assert!(
        demo.contains("0.0.0.0:0"),
        "the demo config's listen line moved"
    );
    std::fs::write(&cfg, demo).unwrap();
    let (code, _, err) = with_stdin(&["run", "--config", cfg.to_str().unwrap()], "");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("well-known password")
            && err.contains("edge-gateway user add admin --role admin"),
        "{err}"
    );
}

/// `gateway.log_level` sets the level; `RUST_LOG`, when set, wins. Off a terminal the lines
/// carry no colour escapes.
#[test]
fn the_log_level_comes_from_the_config_unless_rust_log_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let stderr_of = |level: &str, rust_log: Option<&str>| {
        let cfg = dir.path().join(format!("{level}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[gateway]\nid = \"logs\"\ndata_dir = {:?}\nlog_level = \"{level}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{}{BOILER_AND_PUMP}",
                dir.path().join(level).display().to_string(),
                tcp_bus("127.0.0.1:1")
            ),
        )
        .unwrap();
        // Running is known from systemd's READY=1, whatever the log level lets through.
        let sock_dir = dir.path().join(format!("{level}-notify"));
        std::fs::create_dir_all(&sock_dir).unwrap();
        let notify = Notify::new(&sock_dir);
        let mut cmd = bin();
        cmd.args(["run", "--config", cfg.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .env("NOTIFY_SOCKET", &notify.path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(r) = rust_log {
            cmd.env("RUST_LOG", r);
        }
        let child = cmd.spawn().unwrap();
        notify.wait_for("READY=1", std::time::Duration::from_secs(20));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned()
    };
    let info = stderr_of("info", None);
    assert!(info.contains("gateway running"));
    // A pipe, as journald or a log file is: plain lines, no colour escapes.
    assert!(!info.contains('\x1b'), "{info:?}");
    let quiet = stderr_of("error", None);
    assert!(
        !quiet.contains("gateway running") && !quiet.contains("WARN"),
        "{quiet}"
    );
    assert!(stderr_of("warn", Some("info")).contains("gateway running"));
}

/// SPEC `run --once`: every device polled once, each point with address, raw hex, value, unit
/// and quality; exit 0 when every device answered, 3 when one did not.
#[tokio::test]
async fn run_once_polls_every_device_once_and_exits_3_when_one_is_silent() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"g\"\ndata_dir = {:?}\n{}{BOILER_AND_PUMP}",
            dir.path().display().to_string(),
            tcp_bus(&addr.to_string())
        ),
    )
    .unwrap();
    let once = format!("run --once --config {}", cfg.display());
    let (code, out, err) = run(args(&once)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("device boiler (bus b, tcp "), "{out}");
    let setpoint = out.lines().find(|l| l.contains("setpoint")).unwrap();
    assert!(setpoint.contains("holding 2"), "{setpoint}");
    assert!(setpoint.contains("0x"), "{setpoint}");
    assert!(setpoint.ends_with("good"), "{setpoint}");
    sim.set_fault(PUMP, Some(Fault::Silent));
    let (code, out, _) = run(args(&once)).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("device pump (bus b,"), "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(out.contains("timed out"), "{out}");
    // check-config --probe: the same after the check.
    let (code, out, _) = run(args(&format!(
        "check-config --probe --config {}",
        cfg.display()
    )))
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("ok (1 buses, 2 devices"), "{out}");
}

/// SPEC: addresses in decimal, hex or Modicon references; `--tcp HOST` on 502 (checked by unit
/// tests); a value the type cannot hold exactly is refused, saying what it would become.
#[tokio::test]
async fn read_takes_modicon_references_and_write_refuses_a_value_between_steps() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let a = addr.to_string();
    sim.with_memory(2, |m| m.holding[2] = 4321);
    for at in [
        "--address 2 --table holding",
        "--address 0x0002 --table holding",
        "--address 40003",
    ] {
        let (code, out, err) = run(args(&format!("read --tcp {a} --unit 2 {at}"))).await;
        assert_eq!((code, out.trim()), (0, "4321"), "{at}: {err}");
    }
    let (_, _, err) = run(args(&format!("read --tcp {a} --unit 2 --address 40003"))).await;
    assert!(
        err.contains("40003 is a Modicon reference: holding address 2"),
        "{err}"
    );
    let (code, _, err) = run(args(&format!(
        "write --tcp {a} --unit 2 --table holding --address 2 --value 80.5"
    )))
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("not a step") && err.contains("(nearest: 80 or 81)"),
        "{err}"
    );
    assert_eq!(sim.with_memory(2, |m| m.holding[2]), Some(4321));
}

/// `read --all-orders` shows the four byte/word orders, `--raw` the registers beside the
/// value; a peer that is not Modbus is named.
#[tokio::test]
async fn read_shows_every_order_and_names_a_peer_that_is_not_modbus() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    // f32 123.456 as CDAB (low word first) in holding 20..21 of the pump.
    let bits = 123.456f32.to_bits();
    sim.with_memory(2, |m| {
        m.holding[20] = (bits & 0xFFFF) as u16;
        m.holding[21] = (bits >> 16) as u16;
    });
    let (code, out, err) = run(args(&format!(
        "read --tcp {addr} --unit 2 --table holding --address 20 --type f32 --all-orders"
    )))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CDAB 123.456"), "{out}");
    assert!(
        out.contains("ABCD ") && out.contains("BADC ") && out.contains("DCBA "),
        "{out}"
    );
    // For a person: the address and the raw registers beside each value (the default on a
    // terminal); piped, the value alone.
    let (code, out, err) = run(args(&format!(
        "read --tcp {addr} --unit 2 --table holding --address 20 --type f32 --word-order little --count 1 --raw"
    )))
    .await;
    assert_eq!(code, 0, "{err}");
    let want = format!(
        "   20  0x{:04X} 0x{:04X}  → 123.456\n",
        bits & 0xFFFF,
        bits >> 16
    );
    assert_eq!(out, want);
    // Something else on the port: it sends its banner, reads what it is sent, and hangs up
    // (hanging up before reading would make the client's request meet a reset instead).
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = other.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = other.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
            let _ = s.read(&mut [0u8; 64]).await;
        }
    });
    let (code, _, err) = run(args(&format!(
        "read --tcp {at} --unit 1 --table holding --address 0"
    )))
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("did not answer with Modbus TCP"), "{err}");
}
