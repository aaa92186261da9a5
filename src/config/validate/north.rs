//! The sections of the servers others read the gateway through: `[opcua]`.

use std::path::Path;

use super::super::raw::RawOpcua;
use super::super::{Opcua, OpcuaSecurity, OPCUA_MISSING};
use super::{KeyPath, Validator};

impl Validator {
    /// `[opcua]`: checked whether enabled or not, so a section prepared ahead is right when it
    /// is switched on.
    pub(super) fn opcua(&mut self, raw: RawOpcua, p: &KeyPath, data_dir: &Path) -> Opcua {
        if raw.enabled && !cfg!(feature = "opcua") {
            self.err(&p.key("enabled"), OPCUA_MISSING);
        }
        let listen = raw.listen.unwrap_or_else(|| "0.0.0.0:4840".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            self.err(
                &p.key("listen"),
                format!("`{listen}` is not an IP:port address"),
            );
        }
        let names = raw
            .security
            .unwrap_or_else(|| vec!["basic256sha256".into(), "aes256sha256rsapss".into()]);
        let mut security = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let policy = match name.as_str() {
                "none" => OpcuaSecurity::None,
                "basic256sha256" => OpcuaSecurity::Basic256Sha256,
                "aes256sha256rsapss" => OpcuaSecurity::Aes256Sha256RsaPss,
                other => {
                    self.err(
                        &p.key("security").index(i),
                        format!(
                            "unknown security `{other}` (expected basic256sha256, aes256sha256rsapss or none)"
                        ),
                    );
                    continue;
                }
            };
            if security.contains(&policy) {
                self.err(
                    &p.key("security").index(i),
                    format!("`{name}` is listed twice"),
                );
            } else {
                security.push(policy);
            }
        }
        if names.is_empty() {
            self.err(
                &p.key("security"),
                "must offer at least one endpoint (basic256sha256, aes256sha256rsapss or none)",
            );
        }
        let pki_dir = match raw.pki_dir {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => data_dir.join("pki"),
        };
        Opcua {
            enabled: raw.enabled,
            listen,
            security,
            anonymous: raw.anonymous,
            pki_dir,
            trust_client_certs: raw.trust_client_certs,
            max_sessions: self.int(&p.key("max_sessions"), raw.max_sessions, 20, 1, 1000) as usize,
        }
    }
}
