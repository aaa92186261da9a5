//! The benches' standard polling load: BUSES TCP buses to one simulator × 50 unit ids × 30 u16
//! points (deadband 0) polled every second — "10 × 50 × 30" at ten buses; or another template.
#![allow(dead_code)]

use std::fmt::Write as _;

pub const UNITS: usize = 50;
pub const POINTS: usize = 30;

/// The `[[buses]]`, the device template and the `[[devices]]` of the load; device ids are
/// `b{bus}u{unit}`.
pub fn devices(buses: usize, sim: u16) -> String {
    let pts: Vec<String> = (0..POINTS)
        .map(|i| format!(r#"{{ id = "r{i}", table = "holding", address = {i}, type = "u16", deadband = 0.0 }}"#))
        .collect();
    devices_with(buses, sim, &pts)
}

/// BUSES buses × 50 units polled every second, each device of the template `points`.
pub fn devices_with(buses: usize, sim: u16, points: &[String]) -> String {
    let mut c = String::new();
    for b in 0..buses {
        let _ = write!(c, "[[buses]]\nname = \"bus{b}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{sim}\"\ntimeout_ms = 1000\n");
    }
    let _ = write!(
        c,
        "[templates.dev]\npoints = [\n  {}\n]\n",
        points.join(",\n  ")
    );
    for b in 0..buses {
        for u in 1..=UNITS {
            let _ = write!(
                c,
                "[[devices]]\nid = \"b{b}u{u}\"\nbus = \"bus{b}\"\nunit = {u}\npoll_interval_ms = 1000\ntemplate = \"dev\"\n"
            );
        }
    }
    c
}
