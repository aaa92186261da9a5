//! Sparkplug B topics of one edge node: `spBv1.0/{group}/{verb}/{node}[/{device}]`, and the
//! primary host's `spBv1.0/STATE/{host}`.

use super::NAMESPACE;

/// The topics of one edge node.
pub struct Topics {
    pub group: String,
    pub node: String,
}

impl Topics {
    pub fn node(&self, verb: &str) -> String {
        format!("{NAMESPACE}/{}/{verb}/{}", self.group, self.node)
    }
    pub fn device(&self, verb: &str, device: &str) -> String {
        format!("{NAMESPACE}/{}/{verb}/{}/{device}", self.group, self.node)
    }
    pub fn state(host: &str) -> String {
        format!("{NAMESPACE}/STATE/{host}")
    }
    /// The device of a `DCMD/{node}/{device}` topic.
    pub fn dcmd_device<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let prefix = format!("{NAMESPACE}/{}/DCMD/{}/", self.group, self.node);
        topic
            .strip_prefix(&prefix)
            .filter(|d| !d.is_empty() && !d.contains('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        let t = Topics {
            group: "plant-a".into(),
            node: "gw1".into(),
        };
        assert_eq!(t.node("NBIRTH"), "spBv1.0/plant-a/NBIRTH/gw1");
        assert_eq!(
            t.device("DDATA", "boiler"),
            "spBv1.0/plant-a/DDATA/gw1/boiler"
        );
        assert_eq!(Topics::state("scada"), "spBv1.0/STATE/scada");
        assert_eq!(
            t.dcmd_device("spBv1.0/plant-a/DCMD/gw1/boiler"),
            Some("boiler")
        );
        assert_eq!(t.dcmd_device("spBv1.0/plant-a/DCMD/gw1/a/b"), None);
        assert_eq!(t.dcmd_device("spBv1.0/plant-a/DCMD/gw2/boiler"), None);
    }
}
