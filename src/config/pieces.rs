//! A large config's `[[devices]]` read a piece at a time, so a 60,000-device file is never
//! held as one parsed tree.

use super::raw::{RawConfig, RawDevice};

/// Past twice this size, a config's `[[devices]]` blocks are read this much at a time.
pub(super) const PIECE: usize = 64 * 1024;

/// A table header line's name without spaces (`[[devices]]`, `[devices.points]`); `None` for
/// any other line (an array's `[1, 2],` has a comma, a key an `=`).
fn header(line: &str) -> Option<String> {
    let l = line.split('#').next().unwrap_or("").trim();
    let ok = l.starts_with('[')
        && l.ends_with(']')
        && !l.contains([',', '=', '{', '"', '\''])
        && l.len() > 2;
    ok.then(|| l.chars().filter(|c| !c.is_whitespace()).collect())
}

fn under_devices(h: &str) -> bool {
    h == "[[devices]]" || h.starts_with("[[devices.") || h.starts_with("[devices.")
}

/// A large config (past twice [`PIECE`]) whose `[[devices]]` blocks form one run: the rest
/// read at once, and the devices to be read a piece at a time while they are checked.
/// toml_edit's parser holds ~65 times the text it reads (tokens, events, a document with every
/// span), and a raw device ~1.4 KB until it is checked: a 10 MB config of 60,000 devices took
/// 0.9 GB read whole. `None` for a config of any other shape, read whole.
pub(super) fn split_devices(text: &str) -> Option<(RawConfig, Pieces<'_>)> {
    if text.len() <= 2 * PIECE {
        return None;
    }
    let mut headers: Vec<(usize, String)> = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some(h) = header(line) {
            headers.push((at, h));
        }
        at += line.len();
    }
    let first = headers.iter().position(|(_, h)| h == "[[devices]]")?;
    let end_at = headers[first..]
        .iter()
        .position(|(_, h)| !under_devices(h))
        .map_or(headers.len(), |i| first + i);
    if headers[end_at..].iter().any(|(_, h)| under_devices(h)) {
        return None;
    }
    let (start, end) = (
        headers[first].0,
        headers.get(end_at).map_or(text.len(), |(o, _)| *o),
    );
    let rest = format!("{}{}", &text[..start], &text[end..]);
    let raw: RawConfig = toml_edit::de::from_str(&rest).ok()?;
    if !raw.devices.is_empty() {
        return None;
    }
    let mut cuts = Vec::new();
    let mut piece = start;
    let device_starts = headers[first + 1..end_at]
        .iter()
        .filter(|(_, h)| h == "[[devices]]")
        .map(|(o, _)| *o);
    for cut in device_starts.chain([end]) {
        if cut - piece >= PIECE || cut == end {
            cuts.push((piece, cut));
            piece = cut;
        }
    }
    cuts.reverse();
    Some((
        raw,
        Pieces {
            text,
            cuts,
            failed: false,
        },
    ))
}

/// The devices of a large config, a piece of the text at a time, in order.
pub(super) struct Pieces<'a> {
    pub(super) text: &'a str,
    /// Byte ranges still to read, last first.
    pub(super) cuts: Vec<(usize, usize)>,
    /// A piece did not read: what was checked is incomplete, and the whole must be read.
    pub(super) failed: bool,
}

impl Pieces<'_> {
    pub(super) fn none() -> Pieces<'static> {
        Pieces {
            text: "",
            cuts: Vec::new(),
            failed: false,
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = Vec<RawDevice>;

    fn next(&mut self) -> Option<Vec<RawDevice>> {
        if self.failed {
            return None;
        }
        let (a, b) = self.cuts.pop()?;
        if let Ok(part) = toml_edit::de::from_str::<RawConfig>(&self.text[a..b]) {
            Some(part.devices)
        } else {
            self.failed = true;
            None
        }
    }
}
