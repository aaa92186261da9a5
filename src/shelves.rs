//! ISA-18.2 shelving: alarms an operator set aside for a while (an alarm, a device's, or a
//! point's), each with who, why and until when, kept in `data_dir/shelves` so a restart or a
//! reload does not bring them back early; expired ones come back by themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::Millis;
use crate::sync::Locked as _;

/// The longest shelving (SPEC: 8 hours, a shift).
pub const MAX_S: u64 = 28_800;

/// What is shelved: one alarm (by its key, which stays when it is raised again), every alarm
/// of a device, or of one of its points.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Alarm(String),
    Device(String),
    Point(String, String),
}

impl Target {
    fn key(&self) -> String {
        match self {
            Target::Alarm(k) => format!("alarm:{k}"),
            Target::Device(d) => format!("device:{d}"),
            Target::Point(d, p) => format!("point:{d}/{p}"),
        }
    }

    fn parse(key: &str) -> Option<Target> {
        let (kind, rest) = key.split_once(':')?;
        Some(match kind {
            "alarm" => Target::Alarm(rest.to_string()),
            "device" => Target::Device(rest.to_string()),
            "point" => {
                let (d, p) = rest.split_once('/')?;
                Target::Point(d.to_string(), p.to_string())
            }
            _ => return None,
        })
    }

    /// The device it is about, and the point when it is one point's.
    pub fn device(&self) -> Option<&str> {
        match self {
            Target::Alarm(_) => None,
            Target::Device(d) | Target::Point(d, _) => Some(d),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Alarm(k) => write!(f, "alarm {k}"),
            Target::Device(d) => write!(f, "every alarm of {d}"),
            Target::Point(d, p) => write!(f, "every alarm of {d}.{p}"),
        }
    }
}

/// One shelving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shelf {
    pub until: Millis,
    pub by: String,
    pub comment: String,
    pub at: Millis,
}

/// The shelved targets, as kept on disk.
pub struct Shelves {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Shelf>>,
}

impl Shelves {
    /// Those of `data_dir` (none when the file is missing or unreadable).
    pub fn load(data_dir: &Path) -> Shelves {
        let path = data_dir.join("shelves");
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Shelves {
            path,
            map: Mutex::new(map),
        }
    }

    fn keep(&self, map: &BTreeMap<String, Shelf>) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(map).unwrap_or_default();
        crate::config::versions::write_atomically(&self.path, &bytes)
    }

    /// Shelves `target` (again: the new shelving replaces the old), kept before it counts.
    pub fn shelve(&self, target: &Target, entry: Shelf) -> std::io::Result<()> {
        let mut map = self.map.locked();
        let mut next = map.clone();
        next.insert(target.key(), entry);
        self.keep(&next)?;
        *map = next;
        Ok(())
    }

    /// Takes `target` off the shelf: its shelving, if it was shelved.
    pub fn unshelve(&self, target: &Target) -> std::io::Result<Option<Shelf>> {
        let mut map = self.map.locked();
        let Some(was) = map.get(&target.key()).cloned() else {
            return Ok(None);
        };
        let mut next = map.clone();
        next.remove(&target.key());
        self.keep(&next)?;
        *map = next;
        Ok(Some(was))
    }

    /// The shelving that covers an alarm (its key, device and point) at `now`: its own first,
    /// then its point's, then its device's.
    pub fn covering(
        &self,
        alarm_key: &str,
        device: &str,
        point: Option<&str>,
        now: Millis,
    ) -> Option<(Target, Shelf)> {
        let map = self.map.locked();
        let mut candidates = vec![Target::Alarm(alarm_key.to_string())];
        if let Some(p) = point {
            candidates.push(Target::Point(device.to_string(), p.to_string()));
        }
        candidates.push(Target::Device(device.to_string()));
        candidates.into_iter().find_map(|t| {
            map.get(&t.key())
                .filter(|s| s.until > now)
                .map(|s| (t, s.clone()))
        })
    }

    /// The shelvings past their end at `now`, taken off (they come back by themselves).
    pub fn expire(&self, now: Millis) -> Vec<(Target, Shelf)> {
        let mut map = self.map.locked();
        if !map.values().any(|s| s.until <= now) {
            return Vec::new();
        }
        let mut next = map.clone();
        next.retain(|_, s| s.until > now);
        if let Err(e) = self.keep(&next) {
            tracing::error!("shelving: cannot keep {}: {e}", self.path.display());
        }
        let gone = map
            .iter()
            .filter(|(_, s)| s.until <= now)
            .filter_map(|(k, s)| Some((Target::parse(k)?, s.clone())))
            .collect();
        *map = next;
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shelf(until: Millis) -> Shelf {
        Shelf {
            until,
            by: "admin".into(),
            comment: "maintenance".into(),
            at: 0,
        }
    }

    #[test]
    fn a_shelving_covers_its_alarm_point_or_device_until_it_ends_even_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Shelves::load(dir.path());
        s.shelve(&Target::Point("boiler".into(), "t".into()), shelf(1_000))
            .unwrap();
        s.shelve(&Target::Device("pump".into()), shelf(2_000))
            .unwrap();
        let again = Shelves::load(dir.path());
        assert!(again.covering("k1", "boiler", Some("t"), 500).is_some());
        assert!(again.covering("k1", "boiler", Some("p"), 500).is_none());
        assert!(again.covering("k2", "pump", None, 1_500).is_some());
        assert!(again.covering("k1", "boiler", Some("t"), 1_000).is_none());
        let gone = again.expire(1_500);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, Target::Point("boiler".into(), "t".into()));
        assert!(again.expire(1_500).is_empty());
        assert_eq!(
            again.unshelve(&Target::Device("pump".into())).unwrap(),
            Some(shelf(2_000))
        );
        assert!(Shelves::load(dir.path())
            .covering("k2", "pump", None, 1_500)
            .is_none());
    }
}
