//! Signed fleet messages: Ed25519 (ring, already in the tree for TLS) over the exact text SPEC
//! names, checked against `[fleet] public_keys`; refused when expired or seen before, the ids
//! seen kept in `data_dir/fleet-seen` across restarts. Also the signing side, for the CLI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

use crate::config::FleetKey;

/// Ids remembered at most (the oldest expiry goes first past it).
const SEEN_MAX: usize = 10_000;

/// The text a `config/apply` signature covers.
pub fn config_message(id: &str, target: &str, expires: &str, confirm_s: u64, text: &str) -> String {
    format!("{id}\n{target}\n{expires}\n{confirm_s}\n{text}")
}

/// The text an `rpc/request` signature covers: as config's, `service` and `params` (the JSON
/// text as sent) in place of `confirmS` and the config.
pub fn rpc_message(id: &str, target: &str, expires: &str, service: &str, params: &str) -> String {
    format!("{id}\n{target}\n{expires}\n{service}\n{params}")
}

/// The text a `config/confirm` signature covers.
pub fn confirm_message(id: &str) -> String {
    format!("confirm\n{id}")
}

/// Whether `sig` (base64) is `key_id`'s signature of `message`: the reason when not.
pub fn verify(keys: &[FleetKey], key_id: &str, message: &str, sig: &str) -> Result<(), String> {
    let key = keys
        .iter()
        .find(|k| k.id == key_id)
        .ok_or_else(|| format!("no key `{key_id}` in [fleet] public_keys"))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| "the signature is not base64".to_string())?;
    UnparsedPublicKey::new(&ED25519, &key.public)
        .verify(message.as_bytes(), &sig)
        .map_err(|_| format!("the signature does not match key `{key_id}`"))
}

/// A new key pair: the private key as a PKCS#8 document (what `fleet keygen` writes) and the
/// `public_keys` entry for it, its id the first 8 bytes of the public key's SHA-256 in hex.
pub fn keygen() -> Result<(Vec<u8>, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let entry = public_entry(&pair);
    Ok((pkcs8.as_ref().to_vec(), entry))
}

fn public_entry(pair: &Ed25519KeyPair) -> String {
    let public = pair.public_key().as_ref();
    let id = super::hex(&Sha256::digest(public)[..8]);
    format!("ed25519:{id}:{}", B64.encode(public))
}

/// A private key as `fleet keygen` wrote it (PKCS#8, base64 on one line): signs, and names
/// its key id.
pub struct Signer {
    pair: Ed25519KeyPair,
    pub key_id: String,
}

impl Signer {
    pub fn load(path: &Path) -> Result<Signer, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let der = B64
            .decode(text.trim())
            .map_err(|_| format!("{}: not a key from `fleet keygen`", path.display()))?;
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| format!("{}: not an Ed25519 private key", path.display()))?;
        let entry = public_entry(&pair);
        let key_id = entry.split(':').nth(1).unwrap_or_default().to_string();
        Ok(Signer { pair, key_id })
    }

    /// The `public_keys` entry of this key.
    pub fn public_entry(&self) -> String {
        public_entry(&self.pair)
    }

    /// The base64 signature of `message`.
    pub fn sign(&self, message: &str) -> String {
        B64.encode(self.pair.sign(message.as_bytes()).as_ref())
    }
}

/// Message ids seen, with when each expires (ms), kept in a file so a restart does not make a
/// replay new again. An id past its expiry is refused as expired anyway and is forgotten.
pub struct Seen {
    path: PathBuf,
    ids: HashMap<String, i64>,
}

impl Seen {
    pub fn load(data_dir: &Path) -> Seen {
        let path = data_dir.join("fleet-seen");
        let ids = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (exp, id) = l.split_once(' ')?;
                Some((id.to_string(), exp.parse().ok()?))
            })
            .collect();
        Seen { path, ids }
    }

    /// Takes `id` (expiring at `expires_ms`) unless seen before; the file is written before
    /// the message is acted on, so a crash cannot make it new again.
    pub fn take(&mut self, id: &str, expires_ms: i64, now_ms: i64) -> Result<(), String> {
        if self.ids.contains_key(id) {
            return Err(format!("id `{id}` was seen before (a replay)"));
        }
        self.ids.retain(|_, exp| *exp > now_ms);
        if self.ids.len() >= SEEN_MAX {
            if let Some(oldest) = self
                .ids
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            {
                self.ids.remove(&oldest);
            }
        }
        self.ids.insert(id.to_string(), expires_ms);
        let text = self.ids.iter().fold(String::new(), |mut out, (id, e)| {
            use std::fmt::Write as _;
            let _ = writeln!(out, "{e} {id}");
            out
        });
        crate::config::versions::write_atomically(&self.path, text.as_bytes())
            .map_err(|e| format!("cannot keep the id seen ({e}): refused"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(entry: &str) -> FleetKey {
        FleetKey::parse(entry).unwrap()
    }

    #[test]
    fn a_signature_holds_for_its_key_and_text_only() {
        let dir = tempfile::tempdir().unwrap();
        let (pkcs8, entry) = keygen().unwrap();
        std::fs::write(dir.path().join("k"), B64.encode(&pkcs8)).unwrap();
        let signer = Signer::load(&dir.path().join("k")).unwrap();
        assert_eq!(signer.public_entry(), entry);
        let keys = vec![key_of(&entry)];
        let msg = config_message("id-1", "gw-1", "2026-12-06T05:00:00Z", 60, "[gateway]\n");
        let sig = signer.sign(&msg);
        assert_eq!(verify(&keys, &signer.key_id, &msg, &sig), Ok(()));
        let other = config_message("id-1", "gw-2", "2026-12-06T05:00:00Z", 60, "[gateway]\n");
        assert!(verify(&keys, &signer.key_id, &other, &sig).is_err());
        assert!(verify(&keys, "nobody", &msg, &sig)
            .unwrap_err()
            .contains("no key"));
        let (_, stranger) = keygen().unwrap();
        let strangers = vec![FleetKey {
            id: signer.key_id.clone(),
            ..key_of(&stranger)
        }];
        assert!(verify(&strangers, &signer.key_id, &msg, &sig).is_err());
    }

    #[test]
    fn an_id_is_taken_once_even_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Seen::load(dir.path());
        assert!(seen.take("a", 2_000, 1_000).is_ok());
        assert!(seen.take("a", 2_000, 1_000).is_err());
        let mut again = Seen::load(dir.path());
        assert!(
            again.take("a", 2_000, 1_500).is_err(),
            "remembered across a restart"
        );
        assert!(again.take("b", 9_000, 3_000).is_ok());
        // "a" expired at 2,000: forgotten (an expired message is refused for that anyway).
        assert!(!Seen::load(dir.path()).ids.contains_key("a"));
    }
}
