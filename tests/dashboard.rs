//! The dashboard end to end in headless Chromium (`tests/e2e/dashboard.mjs` with `accounts.mjs` and `calculated.mjs`, playwright-core)
//! against `edge-gateway demo`, once over plain HTTP and once over HTTPS (`demo --tls`, its
//! self-signed certificate accepted). Needs `EDGE_TEST_CHROMIUM` (set by `./scripts/test`, which
//! installs Debian's chromium and the script's npm dependency); without it, says it skipped
//! (and fails under `EDGE_TEST_REQUIRE_ALL=1`).

mod common;

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let Some(chromium) = std::env::var_os("EDGE_TEST_CHROMIUM") else {
        common::skipped(
            "EDGE_TEST_CHROMIUM is not set (./scripts/test installs Chromium and sets it)",
        );
        return;
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    for tls in [false, true] {
        let mut cmd = std::process::Command::new("node");
        cmd.arg("dashboard.mjs")
            .current_dir(&dir)
            .env("EDGE_BIN", env!("CARGO_BIN_EXE_edge-gateway"))
            .env("CHROMIUM", &chromium)
            .env("EDGE_E2E_TLS", if tls { "1" } else { "0" });
        if let (false, Some(shots)) = (tls, std::env::var_os("EDGE_SCREENSHOTS")) {
            cmd.env("SCREENSHOTS", shots);
        }
        let out = cmd.output().expect("node runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        let over = if tls { "https" } else { "http" };
        assert!(
            out.status.success(),
            "dashboard e2e over {over} failed:\n{text}"
        );
    }
}
