//! Changes the dashboard makes to the config text — points added to a device (new or
//! existing), a device removed — through `toml_edit`, so every comment and the layout of the
//! rest of the file stay the technician's. The result is checked and applied like any text.

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
    let mut rules_removed = 0;
    if let Some(rules) = doc.get_mut("rules").and_then(Item::as_array_of_tables_mut) {
        let n = rules.len();
        rules.retain(|t| t.get("device").and_then(Item::as_str) != Some(id));
        rules_removed = n - rules.len();
    }
    Ok((doc.to_string(), rules_removed))
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
}
