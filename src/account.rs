//! Dashboard accounts outside the dashboard: the password prompt (no echo on a terminal), `user
//! add` (writes the `[[users]]` entry into the config, comments kept), and the refusal to serve
//! the demo's well-known logins beyond this machine.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use crate::config::{Config, Role};

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

/// One line from the terminal with echo off (the newline still shows), the old mode restored.
fn read_hidden(prompt: &str) -> Result<String, String> {
    let fd = libc::STDIN_FILENO;
    // SAFETY: tcgetattr and tcsetattr only read and write the termios passed.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &raw mut old) } != 0 {
        return Err(format!(
            "cannot read the terminal's mode: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw const quiet) };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw const old) };
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
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

/// Why `run` must not start: a user whose hash is the demo's admin/admin or viewer/viewer
/// while the dashboard listens beyond loopback, where anyone on the network could log in.
pub fn well_known_login(config: &Config) -> Option<String> {
    let demo = crate::config::parse(crate::config::DEMO).ok()?.config;
    let user = config.users.iter().find(|u| {
        demo.users
            .iter()
            .any(|d| d.password_hash.0 == u.password_hash.0)
    })?;
    if loopback_only(&config.http.listen) {
        return None;
    }
    Some(format!(
        "users: `{}` has the demo's well-known password and http.listen ({}) is reachable from \
         the network; set a password with `edge-gateway user add {} --role {} --config PATH`",
        user.name,
        config.http.listen,
        user.name,
        match user.role {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    ))
}

/// Whether a listen address only takes connections from this machine.
fn loopback_only(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => listen
            .rsplit_once(':')
            .is_some_and(|(host, _)| host == "localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_private() {
        assert!(loopback_only("127.0.0.1:8080"));
        assert!(loopback_only("[::1]:8080"));
        assert!(loopback_only("localhost:8080"));
        assert!(!loopback_only("0.0.0.0:8080"));
        assert!(!loopback_only("[::]:8080"));
        assert!(!loopback_only("192.168.1.10:8080"));
        assert!(!loopback_only("gw.local:8080"));
    }
}
