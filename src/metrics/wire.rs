//! A bus's wire figures: bytes each way, CRC errors, answers with a gap inside, and on a serial
//! line the share of wall time its bytes took on the wire. The link counts them (it owns them:
//! they carry on across a reload that keeps the bus); rendered beside the request figures.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

#[derive(Debug)]
pub struct Wire {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub crc_errors: AtomicU64,
    /// Answers whose bytes stopped for longer than 1.5 characters (plus a little for the
    /// adapter) before the frame was whole: the Modbus serial spec's t1.5, on a serial line.
    pub frame_gaps: AtomicU64,
    /// Late answers and stray bytes an RTU line threw away before or instead of an answer
    /// (a unit answering after its timeout, or twice).
    pub late: AtomicU64,
    /// One character's time on the wire in ns; 0 where there is no baud rate (TCP).
    pub char_ns: AtomicU64,
    /// Since when it counts (the link's start; a reload that keeps the bus keeps it).
    pub since: std::time::Instant,
}

impl Default for Wire {
    fn default() -> Wire {
        Wire {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            crc_errors: AtomicU64::new(0),
            frame_gaps: AtomicU64::new(0),
            late: AtomicU64::new(0),
            char_ns: AtomicU64::new(0),
            since: std::time::Instant::now(),
        }
    }
}

impl Wire {
    /// Bytes both ways so far.
    pub fn bytes(&self) -> u64 {
        self.sent.load(Relaxed) + self.received.load(Relaxed)
    }

    /// The share of the time since it started counting that the bytes both ways took on the
    /// wire (serial lines only).
    pub fn utilisation(&self) -> Option<f64> {
        self.utilisation_over(self.bytes(), self.since.elapsed().as_secs_f64())
    }

    /// The share of `wall_s` seconds that `bytes` took on the wire (serial lines only): the
    /// diagnostics' 5-minute window.
    pub fn utilisation_over(&self, bytes: u64, wall_s: f64) -> Option<f64> {
        let char_ns = self.char_ns.load(Relaxed);
        if char_ns == 0 || wall_s <= 0.0 {
            return None;
        }
        Some((bytes as f64 * char_ns as f64 / 1e9 / wall_s).min(1.0))
    }
}

/// Each bus's wire figures, once its link has been handed them.
pub type Wires = Vec<OnceLock<Arc<Wire>>>;

/// The wire families: bytes (SPEC `edge_bus_bytes_total{bus,direction}`), CRC errors, gaps and
/// the wire utilisation of serial lines.
pub fn render(out: &mut String, bus_names: &[String], wires: &Wires) {
    let each = |out: &mut String, name: &str, f: &dyn Fn(&Wire) -> Option<String>| {
        for (b, bus) in bus_names.iter().enumerate() {
            if let Some(v) = wires[b].get().and_then(|w| f(w)) {
                let _ = writeln!(out, "{name}{{bus=\"{bus}\"{v}");
            }
        }
    };
    out.push_str("# TYPE edge_bus_bytes_total counter\n");
    each(out, "edge_bus_bytes_total", &|w| {
        Some(format!(",direction=\"sent\"}} {}", w.sent.load(Relaxed)))
    });
    each(out, "edge_bus_bytes_total", &|w| {
        Some(format!(
            ",direction=\"received\"}} {}",
            w.received.load(Relaxed)
        ))
    });
    out.push_str("# TYPE edge_bus_crc_errors_total counter\n");
    each(out, "edge_bus_crc_errors_total", &|w| {
        Some(format!("}} {}", w.crc_errors.load(Relaxed)))
    });
    out.push_str("# TYPE edge_bus_frame_gaps_total counter\n");
    each(out, "edge_bus_frame_gaps_total", &|w| {
        Some(format!("}} {}", w.frame_gaps.load(Relaxed)))
    });
    out.push_str("# TYPE edge_bus_late_answers_total counter\n");
    each(out, "edge_bus_late_answers_total", &|w| {
        Some(format!("}} {}", w.late.load(Relaxed)))
    });
    out.push_str("# TYPE edge_bus_wire_utilization_ratio gauge\n");
    each(out, "edge_bus_wire_utilization_ratio", &|w| {
        w.utilisation().map(|u| format!("}} {u:.4}"))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_is_wire_time_over_the_window() {
        let w = Wire::default();
        // TCP: no baud rate, no figure.
        assert_eq!(w.utilisation_over(1000, 10.0), None);
        // 9600 baud 8N1: a character is 11 bits, ~1.146 ms; 960 bytes in 10 s ≈ 11 %.
        w.char_ns.store(1_145_833, Relaxed);
        let u = w.utilisation_over(960, 10.0).unwrap();
        assert!((u - 0.11).abs() < 0.001, "{u}");
        assert_eq!(w.utilisation_over(1_000_000, 1.0), Some(1.0));
        assert_eq!(w.utilisation_over(10, 0.0), None);
    }
}
