//! A config whose shape is wrong (unknown keys, wrong types) read on to the end: every such
//! problem and the meaning problems of the rest of the file, in one pass.
//!
//! serde stops at the first structural error. Each one found is blanked out of a copy of the
//! text (spaces in place of its bytes, so every offset and line stays where it was) and the copy
//! is read again, until it reads; then the rest is validated as usual.

use toml_edit::Document;

use super::keypath::{entry_span, first_line, key_path_at, line_of_offset, KeyPath};
use super::pieces::Pieces;
use super::raw::RawConfig;
use super::validate::Validator;
use super::{located, Problem};

/// Enough for any file a person wrote; a generated one this broken gets the first ones.
const MAX_PROBLEMS: usize = 200;

/// Every problem of a text that is TOML but not of the config's shape, by line; with
/// `meaning`, the meaning problems of the rest too (not for a piece of a large config, whose
/// devices refer to what is outside it).
pub(super) fn problems(text: &str, first: &toml_edit::de::Error, meaning: bool) -> Vec<Problem> {
    let mut work = text.to_string();
    let mut found: Vec<Problem> = Vec::new();
    let mut blanked: Vec<String> = Vec::new();
    let mut message = first_line(first.message());
    let mut span = first.span();
    // Paths and spans are the original's: blanking keeps every offset, but an array whose
    // element was blanked has its later elements renumbered in the copy.
    let Ok(doc) = Document::parse(text) else {
        return found;
    };
    while found.len() < MAX_PROBLEMS {
        let path = span
            .as_ref()
            .map_or_else(KeyPath::default, |s| key_path_at(&doc, s.start));
        let at = path.to_string();
        if blanked.contains(&at) {
            break; // blanking did not help: stop rather than report it twice
        }
        found.push(Problem {
            path: at.clone(),
            line: span.as_ref().map(|s| line_of_offset(text, s.start)),
            message: message.clone(),
        });
        // A missing key blanks its inline table; a `[table]` without it ends the pass.
        let range = (!path.is_empty())
            .then(|| entry_span(&doc, &work, &path))
            .flatten();
        let Some(range) = range else {
            break;
        };
        blank(&mut work, range);
        blanked.push(at);
        match toml_edit::de::from_str::<RawConfig>(&work) {
            Ok(_) if !meaning => break,
            Ok(raw) => {
                let mut v = Validator::default();
                v.config(raw, &mut Pieces::none());
                // A key blanked above is reported once, not again as missing.
                found.extend(
                    located(text, v.problems)
                        .into_iter()
                        .filter(|p| !blanked.iter().any(|b| under(&p.path, b))),
                );
                break;
            }
            Err(e) => {
                message = first_line(e.message());
                span = e.span();
            }
        }
    }
    found.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    found
}

/// `path` is `parent` or inside it.
fn under(path: &str, parent: &str) -> bool {
    path.strip_prefix(parent)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Spaces in place of the range's bytes, its line breaks kept.
fn blank(text: &mut String, range: std::ops::Range<usize>) {
    let blanked: String = text[range.clone()]
        .chars()
        .map(|c| if c == '\n' || c == '\r' { c } else { ' ' })
        .collect();
    // Multi-byte characters become one space each: pad so every later offset stays put.
    let pad = range.len() - blanked.len();
    text.replace_range(range, &format!("{blanked}{}", " ".repeat(pad)));
}

#[cfg(test)]
mod tests {
    use super::super::{parse, ConfigError};

    #[test]
    fn unknown_keys_wrong_types_and_meaning_problems_in_one_pass() {
        let text = "\
[gateway]
id = \"g\"
colour = \"blue\"
[[buses]]
name = \"b\"
kind = \"tcp\"
address = \"127.0.0.1:502\"
timeout_ms = \"fast\"
[[devices]]
id = \"d\"
bus = \"nope\"
unit = 1
points = [ { id = \"p\", tabel = \"holding\", address = 0, type = \"u16\" }, { id = \"q\", table = \"holding\", address = 1, type = \"u16\", scale = \"x\" } ]
[store]
max_db_mb = 0
";
        let Err(ConfigError::Invalid(p)) = parse(text) else {
            panic!("should not parse")
        };
        let got: Vec<(String, Option<usize>)> =
            p.iter().map(|p| (p.path.clone(), p.line)).collect();
        for want in [
            ("gateway.colour", 3),
            ("buses[0].timeout_ms", 8),
            ("devices[0].bus", 11),
            ("devices[0].points[0].tabel", 13),
            ("devices[0].points[1].scale", 13),
            ("store.max_db_mb", 15),
        ] {
            assert!(
                got.iter()
                    .any(|(path, line)| path == want.0 && *line == Some(want.1)),
                "{want:?} not in {p:#?}"
            );
        }
        // Each blanked key once: the wrong type is not reported again as missing.
        assert_eq!(
            got.iter()
                .filter(|(path, _)| path == "buses[0].timeout_ms")
                .count(),
            1
        );
    }
}
