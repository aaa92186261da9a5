//! Label values as Prometheus's text format reads them: ids from the config escaped, so one
//! odd id cannot break the whole scrape.

/// A label value in Prometheus's text format: backslash, double quote and line feed escaped.
pub fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

    /// #31, item 6: a device id with `"` broke the whole `/metrics` scrape (7 invalid lines).
    #[test]
    fn ids_in_labels_are_escaped_so_every_line_stays_valid() {
        let m = Metrics::new(vec!["pump \"A\"\\1\nx".into()], vec!["line\"3".into()]);
        let text = m.render();
        assert!(
            text.contains(r#"edge_device_online{device="pump \"A\"\\1\nx"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"{bus="line\"3""#), "{text}");
        // Every sample line: name, a label set whose quotes pair up, a value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let unescaped = line
                .replace("\\\\", "")
                .replace("\\\"", "")
                .matches('"')
                .count();
            assert_eq!(unescaped % 2, 0, "{line}");
            assert!(line.rsplit_once(' ').is_some(), "{line}");
        }
    }
}
