//! pymodbus, a Modbus stack we did not write, as a device (`pymodbus_server.py`) and as a
//! master (`modbus_client.py`).

use std::process::Command;

use serde_json::Value as Json;

use super::{skipped, Child};

/// The Python with pymodbus (and asyncua, aiosmtpd) that `scripts/test` installs; `None`, said
/// where a person sees it, when it is not set (under CI, `skipped` fails the test instead).
pub fn python() -> Option<String> {
    let p = std::env::var("EDGE_PYMODBUS_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    if p.is_none() {
        skipped("EDGE_PYMODBUS_PYTHON is not set (run scripts/test, which installs pymodbus)");
    }
    p
}

/// Starts pymodbus and waits for its "serving KIND WHERE" line, printed once it listens (a
/// TCP server on port 0 names the port it got). Returns the server (killed when dropped) and
/// WHERE. `extra`: more arguments (`units=N`).
pub fn start_pymodbus(python: &str, kind: &str, at: &str, extra: &[&str]) -> (Child, String) {
    use std::io::BufRead;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/pymodbus_server.py"
    );
    let mut child = std::process::Command::new(python)
        .args([script, kind, at])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start pymodbus");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Child(child);
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("pymodbus's first line");
    // Whatever else it prints is read and dropped, so it never writes into a closed pipe.
    std::thread::spawn(move || reader.lines().for_each(drop));
    let at = line
        .strip_prefix(&format!("serving {kind} "))
        .unwrap_or_else(|| panic!("pymodbus did not start: {line:?}"))
        .trim()
        .to_string();
    (server, at)
}

/// pymodbus's client: each operation's result as one JSON value, in order.
pub fn pymodbus_client(py: &str, port: u16, ops: &Json) -> Vec<Json> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/modbus_client.py"
    );
    let out = Command::new(py)
        .args([script, "127.0.0.1", &port.to_string(), &ops.to_string()])
        .output()
        .expect("run the pymodbus client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pymodbus client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}
