//! The version and the git commit this binary was built from (`build.rs` sets the commit), for
//! `--version`, `edge_build_info` and the fleet's `state`.

/// The version and the git commit it was built from, as `--version` and `edge_build_info` say.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("EDGE_GATEWAY_GIT"),
    ")"
);
/// The git commit alone (`unknown` outside a checkout).
pub const GIT: &str = env!("EDGE_GATEWAY_GIT");
