//! This box as the network knows it: its host name and its interface addresses (the links a
//! tablet can open, the names a certificate of its own must carry).

use std::net::IpAddr;

/// The kernel's host name, lower case.
pub fn name() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim().to_ascii_lowercase();
    (!h.is_empty()).then_some(h)
}

/// Every interface address of this box, loopback included.
pub fn addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}
