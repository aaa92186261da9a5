//! Logins: argon2id password checks, session tokens with expiry, and a per-address limit on
//! failed logins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};

use crate::config::{Role, User};

/// How long a token lives without being used.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins allowed per address within [`FAIL_WINDOW`] before 429.
pub const MAX_FAILURES: u32 = 5;
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);
/// Bound on tracked addresses and live tokens, so a flood cannot grow memory.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    expires: Instant,
}

/// A hash to verify against for unknown users, so timing does not tell which names exist; made
/// by `hash-password`, so it has the same parameters as real ones (a test keeps them equal). A
/// constant: hashing one at start-up cost every start argon2id's 19 MiB (the poll benchmark's
/// peak RSS 33 MB against a steady 19 MB) and 50 ms.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$0/5V+/NJ9LdLTy1PD+RahA$TExXu0LCvTp/RFt5zs7uxAdNXsVRofoOUVbvzj5/Ww0";

pub struct Auth {
    users: Vec<User>,
    tokens: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

#[derive(Debug, PartialEq)]
pub enum LoginError {
    /// Too many failures from this address: retry after this long.
    Limited(Duration),
    BadCredentials,
}

impl Auth {
    pub fn new(users: Vec<User>) -> Auth {
        Auth {
            users,
            tokens: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The live sessions, for a reload to carry over.
    pub fn sessions(&self) -> Vec<(String, Session)> {
        let t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        t.iter()
            .filter(|(_, s)| s.expires > Instant::now())
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }

    /// Takes over sessions from before a reload: only those whose user still exists with the
    /// same role (a removed user or a demoted admin must log in again).
    pub fn adopt(&self, sessions: Vec<(String, Session)>) {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        for (token, s) in sessions {
            if self
                .users
                .iter()
                .any(|u| u.name == s.user && u.role == s.role)
            {
                t.insert(token, s);
            }
        }
    }

    fn limited(&self, from: IpAddr) -> Option<Duration> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (n, since) = f.get(&from)?;
        let left = FAIL_WINDOW.checked_sub(since.elapsed())?;
        (*n >= MAX_FAILURES).then_some(left)
    }

    fn failed(&self, from: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= MAX_TRACKED {
            f.retain(|_, (_, since)| since.elapsed() < FAIL_WINDOW);
        }
        let e = f.entry(from).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAIL_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// Checks a password (slow by design: call from a blocking thread) and issues a token.
    pub fn login(
        &self,
        from: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<(String, Session), LoginError> {
        if let Some(left) = self.limited(from) {
            return Err(LoginError::Limited(left));
        }
        let user = self.users.iter().find(|u| u.name == username);
        let hash = user
            .map(|u| u.password_hash.0.as_str())
            .unwrap_or(DUMMY_HASH);
        // argon2's verify compares in constant time; unknown users cost the same work.
        let ok = PasswordHash::new(hash)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        match user {
            Some(u) if ok => {
                self.failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&from);
                Ok(self.issue(u.name.clone(), u.role))
            }
            _ => {
                self.failed(from);
                Err(LoginError::BadCredentials)
            }
        }
    }

    fn issue(&self, user: String, role: Role) -> (String, Session) {
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let session = Session {
            user,
            role,
            expires: Instant::now() + TOKEN_TTL,
        };
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= MAX_TRACKED {
            t.retain(|_, s| s.expires > Instant::now());
        }
        t.insert(token.clone(), session.clone());
        (token, session)
    }

    /// A session for a token that is known and not expired; refreshes its expiry.
    pub fn resume(&self, token: &str) -> Option<Session> {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match t.get_mut(token) {
            Some(s) if s.expires > Instant::now() => {
                s.expires = Instant::now() + TOKEN_TTL;
                Some(s.clone())
            }
            Some(_) => {
                t.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn logout(&self, token: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// The remaining lifetime of a session, for the login reply.
    pub fn expires_in(session: &Session) -> Duration {
        session.expires.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn the_unknown_user_hash_costs_what_a_real_one_does() {
        let real = crate::cli::hash_password("pw").unwrap();
        let real = PasswordHash::new(&real).unwrap();
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
    }

    fn auth() -> Auth {
        Auth::new(vec![User {
            name: "admin".into(),
            role: Role::Admin,
            password_hash: Secret(crate::cli::hash_password("pw").unwrap()),
        }])
    }

    #[test]
    fn login_resume_logout() {
        let a = auth();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (token, s) = a.login(ip, "admin", "pw").unwrap();
        assert_eq!(token.len(), 64, "256 bits, hex");
        assert_eq!(s.role, Role::Admin);
        assert_eq!(a.resume(&token).unwrap().user, "admin");
        a.logout(&token);
        assert!(a.resume(&token).is_none());
    }

    #[test]
    fn failures_are_limited_per_address() {
        let a = auth();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                a.login(ip, "admin", "wrong").unwrap_err(),
                LoginError::BadCredentials
            );
        }
        assert!(matches!(
            a.login(ip, "admin", "pw"),
            Err(LoginError::Limited(_))
        ));
        // Limited before the name is even looked at.
        assert!(matches!(
            a.login(ip, "nobody", "pw"),
            Err(LoginError::Limited(_))
        ));
        // Another address is not affected.
        assert!(a.login("10.0.0.3".parse().unwrap(), "admin", "pw").is_ok());
    }
}
