//! The config file as the dashboard edits it: written atomically (temp file, fsync, rename,
//! directory fsync), and each applied text kept as a version — the last 20, with who, when and a
//! one-line summary of what changed — to roll back to.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Config;
use crate::model::{now_ms, Millis};
use crate::sync::Locked as _;

/// The config file the gateway runs from, as the dashboard's `config.*` services edit it:
/// where it is, its applied versions, and the way to ask the daemon for a reload (as SIGHUP
/// does; the daemon reads the file again).
pub struct ConfigFile {
    pub path: PathBuf,
    pub versions: Versions,
    pub reload: tokio::sync::mpsc::Sender<ReloadAsk>,
    /// Held by one apply (or rollback) from its check until its reload has run: two applies
    /// at once were both answered "version 19", and one text was in no version.
    pub applying: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The file as it was before the last apply, put back if that apply's reload fails (the
    /// next start would exit on a config that cannot start).
    pub previous: std::sync::Mutex<Option<String>>,
}

impl ConfigFile {
    pub fn new(
        path: PathBuf,
        versions: Versions,
        reload: tokio::sync::mpsc::Sender<ReloadAsk>,
    ) -> Self {
        ConfigFile {
            path,
            versions,
            reload,
            applying: std::sync::Arc::default(),
            previous: std::sync::Mutex::new(None),
        }
    }

    /// After a reload: on success the file stays and nothing is kept to put back; on failure
    /// the file of before the last apply (if an apply caused it) is written back. Returns
    /// whether a file was put back.
    pub fn settle(&self, reloaded: bool) -> std::io::Result<bool> {
        let previous = self.previous.locked().take();
        match previous {
            Some(text) if !reloaded => write_atomically(&self.path, text.as_bytes()).map(|()| true),
            _ => Ok(false),
        }
    }
}

/// A reload asked for by an apply: its audit row is written with the outcome by the gateway
/// then running, and the apply is told how it went (`Err`: why the new config is not running;
/// the previous one runs again and its file is back).
pub struct ReloadAsk {
    /// Who applied, and through what (`ws`, `fleet`).
    pub user: String,
    pub source: String,
    /// What the audit row says was applied (`version 7: devices +pump`).
    pub what: String,
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Versions kept; the oldest beyond this are deleted as new ones arrive.
pub const KEPT: usize = 20;

/// One applied config: `{id}.toml` holds its text, `{id}.json` this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub id: u64,
    pub at: Millis,
    pub user: String,
    pub summary: String,
}

/// The versions directory (`data_dir/config-versions`): on the store's disk, which the service
/// may write.
pub struct Versions {
    dir: PathBuf,
}

impl Versions {
    pub fn new(data_dir: &Path) -> Versions {
        Versions {
            dir: data_dir.join("config-versions"),
        }
    }

    /// Newest first.
    pub fn list(&self) -> std::io::Result<Vec<Version>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                // A half-written or foreign file is skipped, not fatal.
                if let Ok(v) = serde_json::from_slice::<Version>(&std::fs::read(&path)?) {
                    out.push(v);
                }
            }
        }
        out.sort_by_key(|v| std::cmp::Reverse(v.id));
        Ok(out)
    }

    pub fn text(&self, id: u64) -> std::io::Result<String> {
        std::fs::read_to_string(self.dir.join(format!("{id}.toml")))
    }

    /// Keeps `text` as the newest version, unless it is the newest already (a rollback to it,
    /// or a restart with the same file); prunes beyond [`KEPT`].
    pub fn record(&self, text: &str, user: &str, summary: &str) -> std::io::Result<Version> {
        let list = self.list()?;
        if let Some(newest) = list.first() {
            if self.text(newest.id).is_ok_and(|t| t == text) {
                return Ok(newest.clone());
            }
        }
        std::fs::create_dir_all(&self.dir)?;
        let v = Version {
            id: list.first().map_or(1, |v| v.id + 1),
            at: now_ms(),
            user: user.to_string(),
            summary: summary.to_string(),
        };
        write_atomically(&self.dir.join(format!("{}.toml", v.id)), text.as_bytes())?;
        // The description last: a version without one is not listed.
        let meta = serde_json::to_vec(&v).map_err(std::io::Error::other)?;
        write_atomically(&self.dir.join(format!("{}.json", v.id)), &meta)?;
        for old in list.iter().skip(KEPT - 1) {
            let _ = std::fs::remove_file(self.dir.join(format!("{}.json", old.id)));
            let _ = std::fs::remove_file(self.dir.join(format!("{}.toml", old.id)));
        }
        Ok(v)
    }
}

/// What changed between two configs, in one line: `devices +meter-2 -pump ~boiler; rules +r1`.
pub fn summary(old: &Config, new: &Config) -> String {
    fn diff<T>(
        name: &str,
        old: &[T],
        new: &[T],
        id: impl Fn(&T) -> &str,
        same: impl Fn(&T, &T) -> bool,
    ) -> Option<String> {
        let mut parts = Vec::new();
        for n in new {
            match old.iter().find(|o| id(o) == id(n)) {
                None => parts.push(format!("+{}", id(n))),
                Some(o) if !same(o, n) => parts.push(format!("~{}", id(n))),
                Some(_) => {}
            }
        }
        for o in old.iter().filter(|o| !new.iter().any(|n| id(n) == id(o))) {
            parts.push(format!("-{}", id(o)));
        }
        (!parts.is_empty()).then(|| format!("{name} {}", parts.join(" ")))
    }
    let dbg =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let parts: Vec<String> = [
        diff("buses", &old.buses, &new.buses, |b| &b.name, |a, b| a == b),
        diff(
            "devices",
            &old.devices,
            &new.devices,
            |d| &d.id,
            |a, b| dbg(a, b),
        ),
        diff("rules", &old.rules, &new.rules, |r| &r.id, |a, b| dbg(a, b)),
        // The hash is a secret, masked in `Debug`: a new password is a change all the same.
        diff(
            "users",
            &old.users,
            &new.users,
            |u| &u.name,
            |a, b| a.role == b.role && a.password_hash.0 == b.password_hash.0,
        ),
    ]
    .into_iter()
    .flatten()
    .chain(sections_changed(old, new))
    .collect();
    if parts.is_empty() {
        "no setting changed (comments or layout only)".into()
    } else {
        parts.join("; ")
    }
}

/// The notifiers' secrets (masked in `Debug`), to tell a changed URL or key.
fn notifier_secrets(c: &Config) -> Vec<String> {
    c.notifiers
        .iter()
        .filter_map(|n| match &n.kind {
            crate::config::NotifierKind::Webhook { url, secret } => {
                Some(format!("{}\n{}", url.0, secret.0))
            }
            crate::config::NotifierKind::Email(_) => None,
        })
        .collect()
}

/// The other sections that changed, by name (`[mqtt]`). Secrets are masked in `Debug`, so
/// the upstream URLs are compared as they are.
fn sections_changed(old: &Config, new: &Config) -> impl Iterator<Item = String> {
    let dbg =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mysql_url = |c: &Config| c.mysql.as_ref().map(|m| m.url.0.clone());
    let mqtt_url = |c: &Config| c.mqtt.as_ref().map(|m| m.url.0.clone());
    [
        ("gateway", dbg(&old.gateway, &new.gateway)),
        ("http", dbg(&old.http, &new.http)),
        ("push", dbg(&old.push, &new.push)),
        ("events", dbg(&old.events, &new.events)),
        ("store", dbg(&old.store, &new.store)),
        (
            "mysql",
            dbg(&old.mysql, &new.mysql) || mysql_url(old) != mysql_url(new),
        ),
        (
            "mqtt",
            dbg(&old.mqtt, &new.mqtt) || mqtt_url(old) != mqtt_url(new),
        ),
        ("opcua", dbg(&old.opcua, &new.opcua)),
        ("modbus_server", dbg(&old.modbus_server, &new.modbus_server)),
        ("fleet", dbg(&old.fleet, &new.fleet)),
        (
            "notifiers",
            dbg(&old.notifiers, &new.notifiers) || notifier_secrets(old) != notifier_secrets(new),
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| format!("[{name}]"))
    .collect::<Vec<_>>()
    .into_iter()
}

/// Writes a sibling file and renames it over `path`, then syncs the directory: a crash leaves
/// the old file or the new one, never half of either, and the rename itself survives a power
/// cut. The new file gets the old one's owner, group and permissions (root:edge-gateway 0660
/// under /etc, which the service must still read after a `sudo user add`), and is readable by
/// nobody else while it is being written.
///
/// The service, not root, cannot give a file to root: a rename would leave the config owned by
/// the service. Then the complete text, synced in the sibling, is copied into the file itself
/// (its owner and mode stay) and the sibling removed once that is synced too; a power cut in
/// between leaves the whole text in `NAME.new`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let err = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let meta = std::fs::metadata(path).ok();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    let mut kept_owner = true;
    if let Some(meta) = &meta {
        // Only root may give a file away; a user writing their own file keeps it as it is.
        let given = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        kept_owner = given.is_ok() || meta.uid() == f.metadata().map_err(err)?.uid();
        f.set_permissions(meta.permissions()).map_err(err)?;
    }
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    // A file this process may not write itself (read-only to the group) is still replaced:
    // under a new owner, which beats not applying at all.
    let own = if kept_owner {
        None
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .ok()
    };
    match own {
        Some(mut own) => {
            own.write_all(bytes)
                .and_then(|()| own.sync_all())
                .map_err(err)?;
            std::fs::remove_file(&tmp).map_err(err)?;
        }
        None => std::fs::rename(&tmp, path).map_err(err)?,
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An apply whose reload fails puts the file of before back; one that runs keeps its own.
    #[test]
    fn a_failed_reload_puts_the_previous_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let f = ConfigFile::new(path.clone(), Versions::new(dir.path()), tx);
        for (reloaded, left) in [(true, "new"), (false, "old")] {
            std::fs::write(&path, "new").unwrap();
            *f.previous.locked() = Some("old".into());
            assert_eq!(f.settle(reloaded).unwrap(), !reloaded);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), left);
        }
        // A reload no apply asked for (SIGHUP after an edit by hand) leaves the file alone.
        assert!(!f.settle(false).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
    }
}
