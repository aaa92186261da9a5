//! The Configure view's other forms as edits of the text: a `[[buses]]`, `[[rules]]` or
//! `[[calculated]]` entry set key by key (a new one added after the others) or removed, and a
//! whole `[mysql]` or `[mqtt]` section set or taken out. Comments and the rest of the layout
//! stay.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use super::{set_key, KeyEdit};

/// A list of tables the forms edit, by the key that names an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entries {
    /// `[[buses]]` by `name`; devices follow a renamed bus.
    Buses,
    /// `[[rules]]` by `id`.
    Rules,
    /// `[[calculated]]` by `device.point`.
    Calculated,
}

impl Entries {
    fn list(self) -> &'static str {
        match self {
            Entries::Buses => "buses",
            Entries::Rules => "rules",
            Entries::Calculated => "calculated",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Entries::Buses => "name",
            Entries::Rules | Entries::Calculated => "id",
        }
    }

    /// Whether table `t` is the entry named `id`.
    fn is(self, t: &Table, id: &str) -> bool {
        let s = |k: &str| t.get(k).and_then(Item::as_str);
        match self {
            Entries::Calculated => {
                let (Some(d), Some(p)) = (s("device"), s("point")) else {
                    return false;
                };
                id.len() == d.len() + 1 + p.len()
                    && id.starts_with(d)
                    && id.ends_with(p)
                    && id.as_bytes()[d.len()] == b'.'
            }
            _ => s(self.key()) == Some(id),
        }
    }
}

fn parse(text: &str) -> Result<DocumentMut, String> {
    text.parse()
        .map_err(|e| format!("the config is not TOML: {e}"))
}

/// The text with entry `was` (or a new one, after the others) given the form's keys; the
/// entry's index among its list.
pub fn set_entry(
    text: &str,
    what: Entries,
    was: Option<&str>,
    keys: &[KeyEdit],
) -> Result<(String, usize), String> {
    let mut doc = parse(text)?;
    let (list, key) = (what.list(), what.key());
    if doc.get(list).is_none() {
        doc.insert(list, Item::ArrayOfTables(ArrayOfTables::new()));
    }
    let entries = doc[list]
        .as_array_of_tables_mut()
        .ok_or_else(|| format!("`{list}` is not a list of [[{list}]] tables"))?;
    let index = if let Some(id) = was {
        entries
            .iter()
            .position(|t| what.is(t, id))
            .ok_or_else(|| format!("no {list} entry `{id}` in the file"))?
    } else {
        let mut t = Table::new();
        t.decor_mut().set_prefix("\n");
        entries.push(t);
        entries.len() - 1
    };
    let entry = entries.get_mut(index).expect("found or pushed");
    for (k, v) in keys {
        set_key(entry, k, v.as_ref());
    }
    let renamed = keys.iter().find_map(|(k, v)| match (k.as_str(), v) {
        (k, Some(Value::String(s))) if k == key => Some(s.value().clone()),
        _ => None,
    });
    if let (Entries::Buses, Some(old), Some(new)) = (what, was, renamed) {
        if let Some(devices) = doc
            .get_mut("devices")
            .and_then(Item::as_array_of_tables_mut)
        {
            for d in devices.iter_mut() {
                if d.get("bus").and_then(Item::as_str) == Some(old) {
                    set_key(d, "bus", Some(&Value::from(new.as_str())));
                }
            }
        }
    }
    Ok((doc.to_string(), index))
}

/// The text without entry `id` (a bus's devices stay: the validator names them).
pub fn remove_entry(text: &str, what: Entries, id: &str) -> Result<String, String> {
    let mut doc = parse(text)?;
    let list = what.list();
    let entries = doc
        .get_mut(list)
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| format!("no {list} entry `{id}` in the file"))?;
    let before = entries.len();
    entries.retain(|t| !what.is(t, id));
    if entries.len() == before {
        return Err(format!("no {list} entry `{id}` in the file"));
    }
    Ok(doc.to_string())
}

/// The text with section `name` (`mysql`, `mqtt`) given these keys (the section made when
/// absent), or without it (`None`: that upstream off).
pub fn set_section(text: &str, name: &str, keys: Option<&[KeyEdit]>) -> Result<String, String> {
    let mut doc = parse(text)?;
    let Some(keys) = keys else {
        doc.remove(name);
        return Ok(doc.to_string());
    };
    if doc.get(name).is_none() {
        let mut t = Table::new();
        t.decor_mut().set_prefix("\n");
        doc.insert(name, Item::Table(t));
    }
    let t = doc[name]
        .as_table_like_mut()
        .ok_or_else(|| format!("`{name}` is not a table"))?;
    for (k, v) in keys {
        set_key(t, k, v.as_ref());
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# the line\n[[buses]]\nname = \"a\" # the old line\nkind = \"tcp\"\naddress = \"10.0.0.1:502\"\n\n[[devices]]\nid = \"d\"\nbus = \"a\"\nunit = 1\npoints = []\n";

    fn kv(k: &str, v: &str) -> KeyEdit {
        (k.into(), Some(Value::from(v)))
    }

    #[test]
    fn a_bus_renamed_takes_its_devices_and_keeps_the_comments() {
        let (t, i) = set_entry(TEXT, Entries::Buses, Some("a"), &[kv("name", "b")]).unwrap();
        assert_eq!(i, 0);
        assert!(t.contains("name = \"b\" # the old line"), "{t}");
        assert!(t.contains("bus = \"b\""), "{t}");
        assert!(t.starts_with("# the line\n"), "{t}");
        let (t, i) = set_entry(
            &t,
            Entries::Buses,
            None,
            &[kv("name", "c"), kv("kind", "rtu")],
        )
        .unwrap();
        assert_eq!(i, 1);
        assert!(t.contains("name = \"c\""), "{t}");
        let t = remove_entry(&t, Entries::Buses, "c").unwrap();
        assert!(!t.contains("name = \"c\""), "{t}");
        assert!(remove_entry(&t, Entries::Rules, "x").is_err());
    }

    #[test]
    fn a_calculated_point_is_named_by_its_device_and_point() {
        let (t, i) = set_entry(
            TEXT,
            Entries::Calculated,
            None,
            &[kv("device", "d"), kv("point", "eff"), kv("expr", "a / b")],
        )
        .unwrap();
        assert_eq!(i, 0);
        assert!(
            t.contains("[[calculated]]\ndevice = \"d\"\npoint = \"eff\"\nexpr = \"a / b\""),
            "{t}"
        );
        let (t, _) = set_entry(
            &t,
            Entries::Calculated,
            Some("d.eff"),
            &[kv("expr", "a * b")],
        )
        .unwrap();
        assert!(t.contains("expr = \"a * b\""), "{t}");
        assert!(set_entry(&t, Entries::Calculated, Some("d.ef"), &[]).is_err());
        let t = remove_entry(&t, Entries::Calculated, "d.eff").unwrap();
        assert!(!t.contains("calculated"), "{t}");
    }

    #[test]
    fn an_upstream_is_set_and_taken_out() {
        let t = set_section(TEXT, "mysql", Some(&[kv("url", "mysql://u@h/db")])).unwrap();
        assert!(t.contains("[mysql]\nurl = \"mysql://u@h/db\""), "{t}");
        let t = set_section(&t, "mysql", None).unwrap();
        assert!(!t.contains("mysql"), "{t}");
    }
}
