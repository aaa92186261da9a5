//! Dashboard accounts outside the dashboard: the password prompt (no echo on a terminal), `user
//! add` (writes the `[[users]]` entry into the config, comments kept), and the refusal to serve
//! the demo's well-known logins beyond this machine.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use crate::config::Role;

pub use crate::config::preflight::well_known_login;
pub use crate::config::PASSWORD_PLACEHOLDER as PLACEHOLDER;

/// A password from stdin: on a terminal prompted for twice with echo off, otherwise (piped)
/// one line as it comes.
pub fn read_password() -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = read_hidden("Password: ")?;
        let again = read_hidden("Again: ")?;
        if first != again {
            return Err("the two passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    Ok(password)
}

/// One line from the terminal with echo off, the terminal's mode restored after (rpassword,
/// which reads `/dev/tty`: no `unsafe` of our own).
fn read_hidden(prompt: &str) -> Result<String, String> {
    rpassword::prompt_password(prompt).map_err(|e| format!("cannot read the password: {e}"))
}

/// Writes user `name` with `role` and this password's hash into the config at `path`: the
/// entry of that name is updated (a shipped placeholder, say), or a new `[[users]]` entry is
/// added after the others. Every other line, comments included, stays as it was; the file is
/// replaced atomically and keeps its permissions. Returns whether the user was new.
pub fn add_user(path: &Path, name: &str, role: Role, hash: &str) -> Result<bool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let role = match role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    };
    let (text, new) = crate::config::edit::users::set_user(&text, name, Some(role), Some(hash))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    crate::config::versions::write_atomically(path, text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(new)
}
