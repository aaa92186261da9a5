//! Key paths (`devices[3].points[0].address`) and the lines they are on: found in the
//! span-keeping document, or read off a text that did not parse.

use std::collections::HashMap;
use std::fmt;

use toml_edit::{Document, Item};

#[derive(Clone, Debug)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug, Default)]
pub(super) struct KeyPath(pub(super) Vec<Seg>);

impl KeyPath {
    pub(super) fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    pub(super) fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn item_span(item: &Item) -> Option<std::ops::Range<usize>> {
    match item {
        Item::Table(t) => t.span(),
        Item::Value(v) => v.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

/// A child of a table-like or array-like item, by key or index, with its key's span. Items are
/// cloned: this runs only to locate a problem, never on a hot path.
fn child(item: &Item, seg: &Seg) -> Option<(Item, Option<std::ops::Range<usize>>)> {
    match (item, seg) {
        (Item::Table(t), Seg::Key(k)) => t.get_key_value(k).map(|(key, v)| (v.clone(), key.span())),
        (Item::Value(toml_edit::Value::InlineTable(t)), Seg::Key(k)) => {
            t.get_key_value(k).map(|(key, v)| (v.clone(), key.span()))
        }
        (Item::ArrayOfTables(a), Seg::Index(i)) => {
            a.get(*i).map(|t| (Item::Table(t.clone()), t.span()))
        }
        (Item::Value(toml_edit::Value::Array(a)), Seg::Index(i)) => {
            a.get(*i).map(|v| (Item::Value(v.clone()), v.span()))
        }
        _ => None,
    }
}

/// The byte offset where a key path starts: its key when it has one, else its value; for a
/// path that does not exist in the file (a defaulted key), the deepest part that does.
pub(super) fn offset_of(doc: &Document<&str>, path: &KeyPath) -> Option<usize> {
    fn go(item: &Item, segs: &[Seg], best: Option<usize>) -> Option<usize> {
        let Some((seg, rest)) = segs.split_first() else {
            return best;
        };
        match child(item, seg) {
            Some((next, key_span)) => {
                let here = key_span
                    .or_else(|| item_span(&next))
                    .map(|s| s.start)
                    .or(best);
                go(&next, rest, here)
            }
            None => best,
        }
    }
    go(doc.as_item(), &path.0, None)
}

/// Where the entry at `path` is in the text: its key to the end of its value (an array element:
/// the value), with the comma that separates it from a neighbour, so that blanking the range
/// leaves valid TOML. `None` for a `[table]` or an array of tables' element, which have no such
/// range.
pub(super) fn entry_span(
    doc: &Document<&str>,
    text: &str,
    path: &KeyPath,
) -> Option<std::ops::Range<usize>> {
    let (last, parents) = path.0.split_last()?;
    let mut item = doc.as_item().clone();
    for seg in parents {
        item = child(&item, seg)?.0;
    }
    if matches!(item, Item::ArrayOfTables(_)) {
        return None;
    }
    let (value, key_span) = child(&item, last)?;
    // A `[table]`'s span is its header: blanking that would move its keys elsewhere.
    if !matches!(value, Item::Value(_)) {
        return None;
    }
    let value_span = item_span(&value)?;
    let mut range = key_span.map_or(value_span.start, |k| k.start)..value_span.end;
    let bytes = text.as_bytes();
    let after = range.end
        + bytes[range.end..]
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
    if bytes.get(after) == Some(&b',') {
        range.end = after + 1;
    } else if matches!(item, Item::Value(_)) {
        // The last of an inline table or array: the comma before it goes instead.
        let before = bytes[..range.start]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace());
        if let Some(i) = before.filter(|&i| bytes[i] == b',') {
            range.start = i;
        }
    }
    Some(range)
}

/// The deepest key path whose key or value covers `offset`.
pub(super) fn key_path_at(doc: &Document<&str>, offset: usize) -> KeyPath {
    fn walk(item: &Item, path: KeyPath, offset: usize, best: &mut Option<KeyPath>) {
        let covers = |s: Option<std::ops::Range<usize>>| s.is_some_and(|s| s.contains(&offset));
        match item {
            Item::Table(t) => {
                for (k, v) in t {
                    let p = path.key(k);
                    let key_span = t.key(k).and_then(toml_edit::Key::span);
                    if covers(key_span) || covers(item_span(v)) {
                        *best = Some(p.clone());
                    }
                    walk(v, p, offset, best);
                }
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = path.index(i);
                    if covers(t.span()) {
                        *best = Some(p.clone());
                    }
                    walk(&Item::Table(t.clone()), p, offset, best);
                }
            }
            Item::Value(toml_edit::Value::InlineTable(t)) => {
                for (k, v) in t {
                    let p = path.key(k);
                    let key_span = t.key(k).and_then(toml_edit::Key::span);
                    if covers(key_span) || covers(v.span()) {
                        *best = Some(p.clone());
                    }
                    walk(&Item::Value(v.clone()), p, offset, best);
                }
            }
            Item::Value(toml_edit::Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    let p = path.index(i);
                    if covers(v.span()) {
                        *best = Some(p.clone());
                    }
                    walk(&Item::Value(v.clone()), p, offset, best);
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    walk(doc.as_item(), KeyPath::default(), offset, &mut best);
    best.unwrap_or_default()
}

/// The key path at `offset` of a text that did not parse, read off the text itself: the last
/// table header before it (an array of tables counted) and the key on its line.
pub(super) fn path_from_text(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let mut table = KeyPath::default();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    // A header's path: each enclosing array of tables at its current element.
    let path_of = |name: &str, arrays: &HashMap<String, usize>| {
        let mut p = KeyPath::default();
        let mut prefix = String::new();
        for k in name.split('.').map(str::trim) {
            if !prefix.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(k);
            p = p.key(k);
            if let Some(n) = arrays.get(&prefix) {
                p = p.index(n.saturating_sub(1));
            }
        }
        p
    };
    for line in before.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            // A new element: the arrays nested in the previous one start again.
            arrays.retain(|k, _| !k.starts_with(&format!("{name}.")));
            *arrays.entry(name.clone()).or_insert(0) += 1;
            table = path_of(&name, &arrays);
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = path_of(name.trim(), &arrays);
        }
    }
    let line = text[before.rfind('\n').map_or(0, |i| i + 1)..]
        .lines()
        .next()
        .unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !line.trim_start().starts_with('[') && !key.trim().is_empty() => {
            table.key(key.trim().trim_matches('"')).to_string()
        }
        _ => table.to_string(),
    }
}

pub(super) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

pub(super) fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
