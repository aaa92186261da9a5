//! `[[users]]` entries written into the config text (the dashboard's Users view, `user add`):
//! an entry set key by key, keeping the comment at the end of each line, or taken out; every
//! other line stays as it was.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

/// Sets user `name`'s `role` and `password_hash` (either may stay as it is), adding the entry
/// after the others when there is none. Returns the text and whether the user is new.
pub fn set_user(
    text: &str,
    name: &str,
    role: Option<&str>,
    hash: Option<&str>,
) -> Result<(String, bool), String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let users = doc
        .entry("users")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or("`users` is not a list of [[users]] tables")?;
    let existing = users
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(name));
    let new = existing.is_none();
    let table = if let Some(t) = existing {
        t
    } else {
        let mut t = Table::new();
        t["name"] = toml_edit::value(name);
        users.push(t);
        users.iter_mut().last().ok_or("the new entry is gone")?
    };
    if let Some(r) = role {
        set_keeping_comment(table, "role", r);
    }
    if let Some(h) = hash {
        set_keeping_comment(table, "password_hash", h);
    }
    Ok((doc.to_string(), new))
}

/// Takes user `name`'s entry out; `Err` when there is none.
pub fn remove_user(text: &str, name: &str) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let users = doc
        .get_mut("users")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| format!("no user `{name}`"))?;
    let at = users
        .iter()
        .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
        .ok_or_else(|| format!("no user `{name}`"))?;
    users.remove(at);
    Ok(doc.to_string())
}

/// Sets `key` to `value`, keeping the comment at the end of its line (`# admin | viewer`).
fn set_keeping_comment(table: &mut Table, key: &str, value: &str) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(v) => {
            let decor = v.decor().clone();
            *v = Value::from(value);
            *v.decor_mut() = decor;
        }
        None => table[key] = toml_edit::value(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[gateway]\nid = \"gw\"\n\n# the night shift\n[[users]]\nname = \"ann\"\nrole = \"viewer\"   # admin | viewer\npassword_hash = \"h1\"\n\n[[users]]\nname = \"bob\"\nrole = \"admin\"\npassword_hash = \"h2\"\n";

    #[test]
    fn a_user_is_set_added_and_removed_with_every_comment_kept() {
        let (t, new) = set_user(TEXT, "ann", Some("admin"), None).unwrap();
        assert!(!new);
        assert!(t.contains("role = \"admin\"   # admin | viewer"), "{t}");
        assert!(t.contains("# the night shift") && t.contains("password_hash = \"h1\""));
        let (t, new) = set_user(&t, "cy", Some("viewer"), Some("h3")).unwrap();
        assert!(new);
        assert!(
            t.ends_with("[[users]]\nname = \"cy\"\nrole = \"viewer\"\npassword_hash = \"h3\"\n"),
            "{t}"
        );
        let t = remove_user(&t, "bob").unwrap();
        assert!(!t.contains("bob") && t.contains("name = \"cy\""), "{t}");
        assert!(remove_user(&t, "bob").is_err());
    }
}
