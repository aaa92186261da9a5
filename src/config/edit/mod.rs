//! Changes the dashboard makes to the config text — points added to a device (new or
//! existing), a device's keys and points set from the Configure form, a device removed —
//! through `toml_edit`, so every comment and the layout of the rest of the file stay the
//! technician's. The result is checked and applied like any text. Buses, rules and the
//! upstream sections: `entries`; users: `users`.

mod entries;
pub mod users;
pub use entries::{remove_entry, set_entry, set_section, Entries};

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

/// A point to add, as the inspector describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPoint {
    pub id: String,
    pub table: String,
    pub address: u16,
    pub data_type: String,
    pub byte_order: String,
    pub word_order: String,
    pub scale: f64,
    pub offset: f64,
    pub unit: String,
    /// 0: every change is recorded.
    pub deadband: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub writable: bool,
}

/// Where the points go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Device(String),
    NewDevice {
        id: String,
        bus: String,
        unit: u8,
        device_type: String,
    },
}

fn point_table(p: &NewPoint) -> InlineTable {
    let mut t = InlineTable::new();
    t.insert("id", p.id.as_str().into());
    t.insert("table", p.table.as_str().into());
    t.insert("address", i64::from(p.address).into());
    t.insert("type", p.data_type.as_str().into());
    // Defaults left out: the line says only what differs.
    if p.byte_order != "big" {
        t.insert("byte_order", p.byte_order.as_str().into());
    }
    if p.word_order != "big" {
        t.insert("word_order", p.word_order.as_str().into());
    }
    if p.scale != 1.0 {
        t.insert("scale", p.scale.into());
    }
    if p.offset != 0.0 {
        t.insert("offset", p.offset.into());
    }
    if !p.unit.is_empty() {
        t.insert("unit", p.unit.as_str().into());
    }
    if p.deadband != 0.0 {
        t.insert("deadband", p.deadband.into());
    }
    if let Some(min) = p.min {
        t.insert("min", min.into());
    }
    if let Some(max) = p.max {
        t.insert("max", max.into());
    }
    if p.writable {
        t.insert("writable", true.into());
    }
    t
}

/// A multi-line inline array, one point a line, as the starter config writes them.
fn points_array(points: &[NewPoint]) -> Array {
    let mut a = Array::new();
    for p in points {
        push_line(&mut a, point_table(p));
    }
    a.set_trailing_comma(true);
    a.set_trailing("\n");
    a
}

fn push_line(a: &mut Array, t: InlineTable) {
    let mut v = Value::InlineTable(t);
    v.decor_mut().set_prefix("\n  ");
    a.push_formatted(v);
}

fn device_mut<'d>(doc: &'d mut DocumentMut, id: &str) -> Option<&'d mut Table> {
    doc.get_mut("devices")?
        .as_array_of_tables_mut()?
        .iter_mut()
        .find(|t| t.get("id").and_then(Item::as_str) == Some(id))
}

/// The text with `points` added to the target device.
pub fn add_points(text: &str, target: &Target, points: &[NewPoint]) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the config is not TOML: {e}"))?;
    match target {
        Target::Device(id) => {
            let dev =
                device_mut(&mut doc, id).ok_or_else(|| format!("no device `{id}` in the file"))?;
            match dev.get_mut("points") {
                None => {
                    dev.insert("points", Item::Value(Value::Array(points_array(points))));
                }
                Some(Item::Value(Value::Array(a))) => {
                    for p in points {
                        push_line(a, point_table(p));
                    }
                    a.set_trailing_comma(true);
                    a.set_trailing("\n");
                }
                Some(Item::ArrayOfTables(aot)) => {
                    // `[[devices.points]]` style: each new one renders after this device's last.
                    for p in points {
                        let mut t = Table::new();
                        for (k, v) in &point_table(p) {
                            t.insert(k, Item::Value(v.clone()));
                        }
                        aot.push(t);
                    }
                }
                Some(_) => {
                    return Err(format!(
                        "device `{id}`: `points` is neither a list nor [[devices.points]]"
                    ))
                }
            }
        }
        Target::NewDevice {
            id,
            bus,
            unit,
            device_type,
        } => {
            let mut t = Table::new();
            t.decor_mut().set_prefix("\n");
            t.insert("id", toml_edit::value(id.as_str()));
            if !device_type.is_empty() {
                t.insert("type", toml_edit::value(device_type.as_str()));
            }
            t.insert("bus", toml_edit::value(bus.as_str()));
            t.insert("unit", toml_edit::value(i64::from(*unit)));
            t.insert("points", Item::Value(Value::Array(points_array(points))));
            match doc.get_mut("devices") {
                Some(Item::ArrayOfTables(aot)) => aot.push(t),
                Some(_) => return Err("`devices` is not a list of [[devices]] tables".into()),
                None => {
                    let mut aot = ArrayOfTables::new();
                    aot.push(t);
                    doc.insert("devices", Item::ArrayOfTables(aot));
                }
            }
        }
    }
    Ok(doc.to_string())
}

/// The text without the device `id` and the rules that watch it; returns it and how many
/// rules went with it.
pub fn remove_device(text: &str, id: &str) -> Result<(String, usize), String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the config is not TOML: {e}"))?;
    let devices = doc
        .get_mut("devices")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| format!("no device `{id}` in the file"))?;
    let before = devices.len();
    devices.retain(|t| t.get("id").and_then(Item::as_str) != Some(id));
    if devices.len() == before {
        return Err(format!("no device `{id}` in the file"));
    }
    // Its rules and calculated points go with it.
    let mut removed = 0;
    for list in ["rules", "calculated"] {
        if let Some(entries) = doc.get_mut(list).and_then(Item::as_array_of_tables_mut) {
            let n = entries.len();
            entries.retain(|t| t.get("device").and_then(Item::as_str) != Some(id));
            removed += n - entries.len();
        }
    }
    Ok((doc.to_string(), removed))
}

/// A key of a table set to a value, or removed (`None`).
pub type KeyEdit = (String, Option<Value>);

/// One point of the Configure form: the point it was (by id; `None` for a new one) and the
/// keys the form changes. Keys the form does not show stay as the file has them.
#[derive(Debug, Clone)]
pub struct PointEdit {
    pub was: Option<String>,
    pub keys: Vec<KeyEdit>,
}

/// Sets `key` keeping the comment and spacing around the old value; `None` removes it.
pub(super) fn set_key(t: &mut dyn toml_edit::TableLike, key: &str, v: Option<&Value>) {
    match v {
        None => {
            t.remove(key);
        }
        Some(v) => {
            let mut v = v.clone();
            if let Some(old) = t.get_mut(key).and_then(Item::as_value_mut) {
                *v.decor_mut() = old.decor().clone();
                *old = v;
            } else {
                t.insert(key, Item::Value(v));
            }
        }
    }
}

/// The text with device `was` (or a new one) given the form's keys and, when `points` is
/// `Some`, exactly those own points in that order (a template's stay the template's). Rules
/// follow a renamed device. Returns the text and the device's index among `[[devices]]`.
pub fn set_device(
    text: &str,
    was: Option<&str>,
    keys: &[KeyEdit],
    points: Option<&[PointEdit]>,
) -> Result<(String, usize), String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the config is not TOML: {e}"))?;
    if doc.get("devices").is_none() {
        doc.insert("devices", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    let devices = doc["devices"]
        .as_array_of_tables_mut()
        .ok_or("`devices` is not a list of [[devices]] tables")?;
    let index = if let Some(id) = was {
        devices
            .iter()
            .position(|t| t.get("id").and_then(Item::as_str) == Some(id))
            .ok_or_else(|| format!("no device `{id}` in the file"))?
    } else {
        let mut t = Table::new();
        t.decor_mut().set_prefix("\n");
        devices.push(t);
        devices.len() - 1
    };
    let dev = devices.get_mut(index).expect("found or pushed");
    for (k, v) in keys {
        set_key(dev, k, v.as_ref());
    }
    if let Some(points) = points {
        set_points(dev, points)?;
    }
    let renamed = keys.iter().find_map(|(k, v)| match (k.as_str(), v) {
        ("id", Some(Value::String(s))) => Some(s.value().clone()),
        _ => None,
    });
    if let (Some(old), Some(new)) = (was, renamed) {
        if let Some(rules) = doc.get_mut("rules").and_then(Item::as_array_of_tables_mut) {
            for r in rules.iter_mut() {
                if r.get("device").and_then(Item::as_str) == Some(old) {
                    set_key(r, "device", Some(&Value::from(new.as_str())));
                }
            }
        }
    }
    Ok((doc.to_string(), index))
}

/// A device's own points as the form lists them, in either style the file uses.
fn set_points(dev: &mut Table, points: &[PointEdit]) -> Result<(), String> {
    let id_of = |t: &dyn toml_edit::TableLike| t.get("id").and_then(Item::as_str).map(String::from);
    if points.is_empty() {
        dev.remove("points");
        return Ok(());
    }
    match dev.get_mut("points") {
        Some(Item::ArrayOfTables(aot)) => {
            let old: Vec<Table> = aot.iter().cloned().collect();
            let mut out = ArrayOfTables::new();
            for pe in points {
                let mut t = pe
                    .was
                    .as_ref()
                    .and_then(|w| old.iter().find(|t| id_of(*t).as_ref() == Some(w)).cloned())
                    .unwrap_or_default();
                for (k, v) in &pe.keys {
                    set_key(&mut t, k, v.as_ref());
                }
                out.push(t);
            }
            *aot = out;
        }
        None | Some(Item::Value(Value::Array(_))) => {
            let old: Vec<InlineTable> = match dev.get("points") {
                Some(Item::Value(Value::Array(a))) => a
                    .iter()
                    .filter_map(Value::as_inline_table)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            let mut a = Array::new();
            for pe in points {
                let kept = pe
                    .was
                    .as_ref()
                    .and_then(|w| old.iter().find(|t| id_of(*t).as_ref() == Some(w)).cloned());
                let mut t = kept.unwrap_or_default();
                for (k, v) in &pe.keys {
                    set_key(&mut t, k, v.as_ref());
                }
                push_line(&mut a, t);
            }
            a.set_trailing_comma(true);
            a.set_trailing("\n");
            set_key(dev, "points", Some(&Value::Array(a)));
        }
        Some(_) => return Err("`points` is neither a list nor [[devices.points]]".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const TEXT: &str = "\
# The plant's gateway. Keep me.
[gateway]
id = \"g\"

[[buses]]
name = \"b\"  # the PLC
kind = \"tcp\"
address = \"127.0.0.1:502\"

[[devices]]
id = \"a\"
bus = \"b\"
unit = 1
# points of a, one table each
[[devices.points]]
id = \"t\"
table = \"holding\"
address = 0
type = \"u16\"

[[devices]]
id = \"m\"
bus = \"b\"
unit = 2
points = [
  { id = \"v\", table = \"input\", address = 0, type = \"f32\" },
]

[[rules]]
id = \"hot\"
device = \"a\"
point = \"t\"
kind = \"above\"
threshold = 1.0
";

    fn point(id: &str) -> NewPoint {
        NewPoint {
            id: id.into(),
            table: "holding".into(),
            address: 10,
            data_type: "f32".into(),
            byte_order: "big".into(),
            word_order: "little".into(),
            scale: 0.1,
            offset: 0.0,
            unit: "°C".into(),
            deadband: 0.0,
            min: None,
            max: None,
            writable: false,
        }
    }

    fn points_of(text: &str, device: &str) -> Vec<String> {
        let c = parse(text)
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
            .config;
        let d = c.devices.iter().find(|d| d.id == device).unwrap();
        d.points.iter().map(|p| p.id.clone()).collect()
    }

    #[test]
    fn points_go_to_their_device_in_either_style_and_comments_stay() {
        // `a` is not the last device and uses [[devices.points]]: the new one must not land
        // under `m`.
        let t = add_points(TEXT, &Target::Device("a".into()), &[point("x")]).unwrap();
        assert_eq!(points_of(&t, "a"), ["t", "x"]);
        assert_eq!(points_of(&t, "m"), ["v"]);
        let t = add_points(&t, &Target::Device("m".into()), &[point("y"), point("z")]).unwrap();
        assert_eq!(points_of(&t, "m"), ["v", "y", "z"]);
        for comment in [
            "# The plant's gateway. Keep me.",
            "# the PLC",
            "# points of a, one table each",
        ] {
            assert!(t.contains(comment), "{comment} lost:\n{t}");
        }
        assert!(t.contains("word_order = \"little\""), "{t}");
        let c = parse(&t).unwrap().config;
        let y = &c.devices[1].points[1];
        assert_eq!(
            (y.address, y.format.scale, y.unit.as_str()),
            (10, 0.1, "°C")
        );
    }

    #[test]
    fn a_new_device_and_a_removed_one() {
        let target = Target::NewDevice {
            id: "n".into(),
            bus: "b".into(),
            unit: 7,
            device_type: "meter".into(),
        };
        let t = add_points(TEXT, &target, &[point("p")]).unwrap();
        assert_eq!(points_of(&t, "n"), ["p"]);
        assert!(t.starts_with("# The plant's gateway. Keep me."));
        let (t, rules) = remove_device(&t, "a").unwrap();
        assert_eq!(rules, 1);
        let c = parse(&t).unwrap().config;
        let ids: Vec<_> = c.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["m", "n"]);
        assert!(c.rules.is_empty());
        assert!(remove_device(&t, "a").is_err());
        assert!(add_points(&t, &Target::Device("nope".into()), &[point("p")]).is_err());
    }

    fn set(k: &str, v: impl Into<Value>) -> KeyEdit {
        (k.to_string(), Some(v.into()))
    }

    #[test]
    fn the_form_sets_keys_and_points_in_place_and_keeps_every_comment() {
        // `a` in [[devices.points]] style: rename it, move it to unit 3, change its point's
        // address, add one; `m` (inline list): drop `v`, add `w`.
        let edits = [
            PointEdit {
                was: Some("t".into()),
                keys: vec![set("address", 4), ("scale".into(), None)],
            },
            PointEdit {
                was: None,
                keys: vec![
                    set("id", "n"),
                    set("table", "input"),
                    set("address", 9),
                    set("type", "i16"),
                    set("poll_interval_ms", 60000),
                ],
            },
        ];
        let (t, i) = set_device(
            TEXT,
            Some("a"),
            &[set("id", "a2"), set("unit", 3), set("type", "boiler")],
            Some(&edits),
        )
        .unwrap();
        assert_eq!(i, 0);
        let (t, _) = set_device(
            &t,
            Some("m"),
            &[],
            Some(&[PointEdit {
                was: None,
                keys: vec![
                    set("id", "w"),
                    set("table", "coil"),
                    set("address", 1),
                    set("type", "bool"),
                ],
            }]),
        )
        .unwrap();
        let c = parse(&t).unwrap_or_else(|e| panic!("{e:?}\n{t}")).config;
        let a = &c.devices[0];
        assert_eq!(
            (a.id.as_str(), a.unit, a.device_type.as_str()),
            ("a2", 3, "boiler")
        );
        assert_eq!(points_of(&t, "a2"), ["t", "n"]);
        assert_eq!(a.points[0].address, 4);
        assert_eq!(
            a.points[1].poll_interval,
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(points_of(&t, "m"), ["w"]);
        // The rule followed the rename.
        assert_eq!(c.rules[0].device, 0);
        for comment in [
            "# The plant's gateway. Keep me.",
            "# the PLC",
            "# points of a, one table each",
        ] {
            assert!(t.contains(comment), "{comment} lost:\n{t}");
        }
        // A new device from the form, and an unknown one refused.
        let (t, i) = set_device(
            &t,
            None,
            &[set("id", "z"), set("bus", "b"), set("unit", 9)],
            Some(&[PointEdit {
                was: None,
                keys: vec![
                    set("id", "p"),
                    set("table", "holding"),
                    set("address", 0),
                    set("type", "u16"),
                ],
            }]),
        )
        .unwrap();
        assert_eq!(i, 2);
        assert_eq!(points_of(&t, "z"), ["p"]);
        assert!(set_device(&t, Some("nope"), &[], None).is_err());
    }
}
