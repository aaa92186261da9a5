//! A fleet over the broker: the retained `state` a fleet engineer reads, and the signed
//! messages a fleet sends, checked against `[fleet] public_keys`.

pub mod apply;
pub mod client;
pub mod command;
pub mod remote;
pub mod signed;
pub mod state;

pub use state::publish_states;

/// Bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
