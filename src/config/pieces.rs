//! A large config's `[[devices]]` read a piece at a time, so a 60,000-device file is never
//! held as one parsed tree.

use toml_edit::Document;

use super::keypath::{line_of_offset, offset_of, KeyPath, Seg};
use super::raw::{RawConfig, RawDevice};
use super::Problem;

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
            broken: Vec::new(),
            read: Vec::new(),
            devices: (start, end),
        },
    ))
}

/// The devices of a large config, a piece of the text at a time, in order.
pub(super) struct Pieces<'a> {
    pub(super) text: &'a str,
    /// Byte ranges still to read, last first.
    pub(super) cuts: Vec<(usize, usize)>,
    /// The problems of the pieces that did not read, located in the whole text: what was
    /// checked around them is incomplete.
    pub(super) broken: Vec<Problem>,
    /// The pieces read: byte range, index of their first device, how many.
    read: Vec<(usize, usize, usize, usize)>,
    /// Where the run of `[[devices]]` blocks is in the text.
    devices: (usize, usize),
}

impl Pieces<'_> {
    pub(super) fn none() -> Pieces<'static> {
        Pieces {
            text: "",
            cuts: Vec::new(),
            broken: Vec::new(),
            read: Vec::new(),
            devices: (0, 0),
        }
    }
}

impl Pieces<'_> {
    /// The lines of problems found while the pieces were checked, each located in its own
    /// piece (or in the text around the devices), never in a document of the whole text: a
    /// 12 MB config with one problem at its end took 1.08 GB to check when the whole was read
    /// again to say where it was.
    pub(super) fn locate(&self, found: Vec<(KeyPath, String)>) -> Vec<Problem> {
        let (start, end) = self.devices;
        let rest = format!("{}{}", &self.text[..start], &self.text[end..]);
        let rest_doc = Document::parse(rest.as_str()).ok();
        let mut docs: std::collections::HashMap<usize, Option<Document<&str>>> =
            std::collections::HashMap::new();
        found
            .into_iter()
            .map(|(path, message)| {
                let offset = match (path.0.first(), path.0.get(1)) {
                    (Some(Seg::Key(k)), Some(&Seg::Index(i))) if k == "devices" => self
                        .read
                        .iter()
                        .position(|&(_, _, f, n)| (f..f + n).contains(&i))
                        .and_then(|p| {
                            let (a, b, first, _) = self.read[p];
                            let doc = docs
                                .entry(p)
                                .or_insert_with(|| Document::parse(&self.text[a..b]).ok());
                            let mut local = path.clone();
                            local.0[1] = Seg::Index(i - first);
                            doc.as_ref()
                                .and_then(|d| offset_of(d, &local))
                                .map(|o| a + o)
                        }),
                    _ => rest_doc
                        .as_ref()
                        .and_then(|d| offset_of(d, &path))
                        .map(|o| if o < start { o } else { o + (end - start) }),
                };
                Problem {
                    line: offset.map(|o| line_of_offset(self.text, o)),
                    path: path.to_string(),
                    message,
                }
            })
            .collect()
    }
}

impl Pieces<'_> {
    /// Why the piece `a..b` (its first device the `first`th) does not read: its problems as a
    /// whole read gives them, the devices numbered and the lines counted in the whole text.
    fn broken_piece(&self, a: usize, b: usize, first: usize) -> Vec<Problem> {
        let piece = &self.text[a..b];
        let Err(e) = toml_edit::de::from_str::<RawConfig>(piece) else {
            return Vec::new();
        };
        let lines_before = line_of_offset(self.text, a) - 1;
        super::unreadable(piece, &e, false)
            .into_iter()
            .map(|p| Problem {
                path: renumbered(&p.path, first),
                line: p.line.map(|l| l + lines_before),
                message: p.message,
            })
            .collect()
    }
}

/// `devices[i]...` of a piece as `devices[first + i]...` of the whole.
fn renumbered(path: &str, first: usize) -> String {
    let Some(rest) = path.strip_prefix("devices[") else {
        return path.to_string();
    };
    match rest.split_once(']') {
        Some((i, tail)) => match i.parse::<usize>() {
            Ok(i) => format!("devices[{}]{tail}", first + i),
            Err(_) => path.to_string(),
        },
        None => path.to_string(),
    }
}

impl Iterator for Pieces<'_> {
    type Item = Vec<RawDevice>;

    /// The next piece's devices; a piece that does not read is noted in `broken` (every
    /// piece is still read: all their problems in one pass) and counted by its headers.
    fn next(&mut self) -> Option<Vec<RawDevice>> {
        loop {
            let (a, b) = self.cuts.pop()?;
            let first = self.read.last().map_or(0, |&(_, _, f, n)| f + n);
            if let Ok(part) = toml_edit::de::from_str::<RawConfig>(&self.text[a..b]) {
                self.read.push((a, b, first, part.devices.len()));
                return Some(part.devices);
            }
            let problems = self.broken_piece(a, b, first);
            self.broken.extend(problems);
            // Cut at `[[devices]]` headers: its devices are its headers.
            let n = self.text[a..b]
                .split_inclusive('\n')
                .filter(|l| header(l).as_deref() == Some("[[devices]]"))
                .count();
            self.read.push((a, b, first, n));
        }
    }
}
