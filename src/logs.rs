//! The gateway's last log lines in memory, for `system.log` (an admin over WebSocket, a fleet
//! over the broker): the daemon's log writer copies each line here as it goes to stderr. Bounded
//! by lines and bytes, so a log storm costs a fixed amount of RAM.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{LazyLock, Mutex};

use crate::sync::Locked as _;

/// Lines kept, at most.
pub const MAX_LINES: usize = 1000;
/// Bytes kept, at most (a line longer than 2 KiB is cut).
const MAX_BYTES: usize = 256 * 1024;
const MAX_LINE: usize = 2048;

#[derive(Default)]
struct Ring {
    lines: VecDeque<String>,
    bytes: usize,
}

static RING: LazyLock<Mutex<Ring>> = LazyLock::new(Mutex::default);

/// Keeps one line (its terminal colours taken out), dropping the oldest past the bounds.
pub fn push(line: &str) {
    let mut text = strip_ansi(line.trim_end());
    if text.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    let mut r = RING.locked();
    r.bytes += text.len();
    r.lines.push_back(text);
    while r.lines.len() > MAX_LINES || r.bytes > MAX_BYTES {
        let Some(old) = r.lines.pop_front() else {
            break;
        };
        r.bytes -= old.len();
    }
}

/// The last `n` lines, oldest first.
pub fn last(n: usize) -> Vec<String> {
    let r = RING.locked();
    r.lines
        .iter()
        .skip(r.lines.len().saturating_sub(n))
        .cloned()
        .collect()
}

/// `ESC [ … letter` sequences out.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The log's writer: each line to stderr and into the ring. `stamp`: the lines carry no time
/// of their own (journald stamps them), so the ring's copy gets one.
#[derive(Clone, Copy)]
pub struct Tee {
    pub stamp: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Tee {
    type Writer = TeeWriter;

    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter {
            stamp: self.stamp,
            buf: Vec::new(),
        }
    }
}

/// One event's text: written through to stderr, kept whole for the ring until dropped.
pub struct TeeWriter {
    stamp: bool,
    buf: Vec<u8>,
}

impl Write for TeeWriter {
    /// All of `b` to stderr (whose failure, a closed stderr, must not cost the ring its copy)
    /// and into the line kept.
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(b);
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl Drop for TeeWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if self.stamp {
                push(&format!(
                    "{} {line}",
                    crate::model::rfc3339(crate::model::now_ms())
                ));
            } else {
                push(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_lines_within_its_bounds() {
        for i in 0..(MAX_LINES + 10) {
            push(&format!("\u{1b}[32mline {i}\u{1b}[0m"));
        }
        let tail = last(3);
        let n = MAX_LINES + 9;
        assert_eq!(
            tail,
            [
                format!("line {}", n - 2),
                format!("line {}", n - 1),
                format!("line {n}")
            ]
        );
        assert_eq!(last(5000).len(), MAX_LINES);
        push(&"x".repeat(10_000));
        assert!(last(1)[0].len() <= MAX_LINE + '…'.len_utf8());
    }
}
