//! Build script: stamps the git commit into the binary (`--version`, `edge_build_info`), so a
//! box in the field says exactly what it runs. A build outside a git checkout (a source
//! tarball) says `unknown`, or what `EDGE_GATEWAY_GIT` gives.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EDGE_GATEWAY_GIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let git = std::env::var("EDGE_GATEWAY_GIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        if !out.status.success() || rev.is_empty() {
            return None;
        }
        // A tree with changes not committed says so.
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        Some(if dirty { format!("{rev}-dirty") } else { rev })
    });
    println!(
        "cargo:rustc-env=EDGE_GATEWAY_GIT={}",
        git.unwrap_or_else(|| "unknown".into())
    );
}
