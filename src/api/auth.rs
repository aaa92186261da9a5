//! Logins: argon2id password checks (two at a time), session tokens with expiry, and limits on
//! failed logins per address, per address and user name, and a slow-down per user name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};

use crate::config::{Role, User};
use crate::sync::Locked;

/// How long a token lives without being used.
/// Failed logins allowed per (address, user name) within [`FAIL_WINDOW`] before 429.
pub const MAX_FAILURES: u32 = 5;
/// Failed logins allowed per address, whatever the names, within [`FAIL_WINDOW`]: more than
/// for one name, as several tablets may share an address behind NAT or a proxy.
pub const MAX_ADDRESS_FAILURES: u32 = 20;
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);
/// Password checks that run at once: each argon2id check takes 19 MiB and ~50 ms of a core, so
/// a flood of logins must queue rather than take the box's memory.
const CHECKS_AT_ONCE: usize = 2;
/// How long a login waits for a check before it is told to retry.
const CHECK_DEADLINE: Duration = Duration::from_secs(10);
/// Failures at one user name (from any address) past which each login as it is slowed, by
/// [`SLOW_STEP`] per failure up to [`SLOW_MAX`]: guessing from many addresses gets slow, while
/// the real user still gets in (a lock-out would hand the attacker a way to lock them out).
const SLOW_AFTER: u32 = MAX_FAILURES;
const SLOW_STEP: Duration = Duration::from_millis(250);
const SLOW_MAX: Duration = Duration::from_secs(5);
/// Bound on tracked addresses, names and live tokens, so a flood cannot grow memory.
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
    /// How long a session lives unused: from its login, its last resume or its last request
    /// (`[http] session_idle_s`; tests shorten it).
    ttl: Mutex<Duration>,
    failures: Mutex<Failures>,
    checks: tokio::sync::Semaphore,
}

/// Failed (and in-flight) logins in the current window of each key.
#[derive(Default)]
struct Failures {
    address: Window<IpAddr>,
    address_user: Window<(IpAddr, String)>,
    user: Window<String>,
}

/// Counts per key over a fixed window from the key's first count.
struct Window<K>(HashMap<K, (u32, Instant)>);

impl<K> Default for Window<K> {
    fn default() -> Self {
        Window(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq> Window<K> {
    fn count(&self, k: &K) -> u32 {
        match self.0.get(k) {
            Some((n, since)) if since.elapsed() < FAIL_WINDOW => *n,
            _ => 0,
        }
    }

    /// What is left of the key's window, when its count has reached `max`.
    fn limited(&self, k: &K, max: u32) -> Option<Duration> {
        let (n, since) = self.0.get(k)?;
        let left = FAIL_WINDOW.checked_sub(since.elapsed())?;
        (*n >= max).then_some(left)
    }

    fn add(&mut self, k: K) {
        if self.0.len() >= MAX_TRACKED {
            self.0.retain(|_, (_, since)| since.elapsed() < FAIL_WINDOW);
        }
        let e = self.0.entry(k).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAIL_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// Takes back one count (an attempt that turned out right).
    fn undo(&mut self, k: &K) {
        if let Some(e) = self.0.get_mut(k) {
            e.0 = e.0.saturating_sub(1);
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum LoginError {
    /// Too many failures from this address: retry after this long.
    Limited(Duration),
    /// Too many password checks queued: retry shortly.
    Busy,
    BadCredentials,
}

impl Auth {
    pub fn new(users: Vec<User>, idle: Duration) -> Auth {
        Auth {
            users,
            tokens: Mutex::new(HashMap::new()),
            ttl: Mutex::new(idle),
            failures: Mutex::default(),
            checks: tokio::sync::Semaphore::new(CHECKS_AT_ONCE),
        }
    }

    /// The live sessions, for a reload to carry over.
    pub fn sessions(&self) -> Vec<(String, Session)> {
        let t = self.tokens.locked();
        t.iter()
            .filter(|(_, s)| s.expires > Instant::now())
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }

    /// Ends every session of `user` (removed, or their role or password changed).
    pub fn forget_user(&self, user: &str) {
        self.tokens.locked().retain(|_, s| s.user != user);
    }

    /// Takes over sessions from before a reload: only those whose user still exists with the
    /// same role (a removed user or a demoted admin must log in again).
    pub fn adopt(&self, sessions: Vec<(String, Session)>) {
        let mut t = self.tokens.locked();
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

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.locked()
    }

    /// Checks a password and issues a token. The attempt counts as a failure from before the
    /// check until it proves right, so logins sent at once cannot slip past the limit; checks
    /// run at most [`CHECKS_AT_ONCE`] at a time, off the async workers.
    pub async fn login(
        &self,
        from: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<(String, Session), LoginError> {
        let (name, role) = self.authenticate(from, username, password).await?;
        Ok(self.issue(name, role))
    }

    /// [`Auth::login`]'s check alone, with the same limits, for the servers that keep their
    /// own sessions (OPC UA): the user and role when the password is theirs.
    pub async fn authenticate(
        &self,
        from: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<(String, Role), LoginError> {
        let pair = (from, username.to_string());
        let slow = {
            let mut f = self.failures();
            let limited = f
                .address
                .limited(&from, MAX_ADDRESS_FAILURES)
                .or_else(|| f.address_user.limited(&pair, MAX_FAILURES));
            if let Some(left) = limited {
                return Err(LoginError::Limited(left));
            }
            f.address.add(from);
            f.address_user.add(pair.clone());
            let over = f.user.count(&pair.1).saturating_sub(SLOW_AFTER);
            (SLOW_STEP * over).min(SLOW_MAX)
        };
        let ok = self.check(username, password, slow).await;
        let mut f = self.failures();
        match ok {
            Ok(Some((name, role))) => {
                // Only this attempt is taken back: another name's failures from this address
                // stay counted.
                f.address.undo(&from);
                f.address_user.undo(&pair);
                Ok((name, role))
            }
            Ok(None) => {
                f.user.add(pair.1);
                Err(LoginError::BadCredentials)
            }
            Err(e) => {
                f.address.undo(&from);
                f.address_user.undo(&pair);
                Err(e)
            }
        }
    }

    /// The user, if the password is theirs; waits `slow` first, then for a free check.
    async fn check(
        &self,
        username: &str,
        password: &str,
        slow: Duration,
    ) -> Result<Option<(String, Role)>, LoginError> {
        tokio::time::sleep(slow).await;
        let _permit = tokio::time::timeout(CHECK_DEADLINE, self.checks.acquire())
            .await
            .map_err(|_| LoginError::Busy)?
            .map_err(|_| LoginError::Busy)?;
        let user = self.users.iter().find(|u| u.name == username);
        let hash = user.map_or_else(|| DUMMY_HASH.to_string(), |u| u.password_hash.0.clone());
        let password = password.to_string();
        // argon2 is deliberately slow: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || verify(&hash, &password))
            .await
            .unwrap_or(false);
        Ok(user.filter(|_| ok).map(|u| (u.name.clone(), u.role)))
    }

    fn issue(&self, user: String, role: Role) -> (String, Session) {
        let bytes: [u8; 32] = rand::random();
        let token = bytes.iter().fold(String::with_capacity(64), |mut out, b| {
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{b:02x}"));
            out
        });
        let session = Session {
            user,
            role,
            expires: Instant::now() + *self.ttl.locked(),
        };
        let mut t = self.tokens.locked();
        if t.len() >= MAX_TRACKED {
            t.retain(|_, s| s.expires > Instant::now());
        }
        t.insert(token.clone(), session.clone());
        (token, session)
    }

    /// A session for a token that is known and not expired; refreshes its expiry.
    pub fn resume(&self, token: &str) -> Option<Session> {
        let mut t = self.tokens.locked();
        match t.get_mut(token) {
            Some(s) if s.expires > Instant::now() => {
                s.expires = Instant::now() + *self.ttl.locked();
                Some(s.clone())
            }
            Some(_) => {
                t.remove(token);
                None
            }
            None => None,
        }
    }

    /// A request made with the session: it was used, so it lives on (expired ones stay so).
    pub fn touch(&self, token: &str) {
        if let Some(s) = self.tokens.locked().get_mut(token) {
            if s.expires > Instant::now() {
                s.expires = Instant::now() + *self.ttl.locked();
            }
        }
    }

    pub fn logout(&self, token: &str) {
        self.tokens.locked().remove(token);
    }

    /// Whether a token names a live session (known, not expired).
    pub fn valid(&self, token: &str) -> bool {
        self.tokens
            .locked()
            .get(token)
            .is_some_and(|s| s.expires > Instant::now())
    }

    /// Sets the lifetime of sessions made or resumed from now on (a test's short one).
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.locked() = ttl;
    }

    /// The remaining lifetime of a session, for the login reply.
    pub fn expires_in(session: &Session) -> Duration {
        session.expires.saturating_duration_since(Instant::now())
    }
}

/// An argon2id PHC string for `[[users]]` (`hash-password`, `user add`, the Users view).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The shortest password the dashboard takes.
pub const MIN_PASSWORD: usize = 10;

/// The entries of 10 characters or more among the 1,000 most common passwords (SecLists'
/// "10-million-password-list-top-1000", MIT): the shorter ones are refused by length already.
const COMMON_LONG: [&str; 12] = [
    "qwertyuiop",
    "1234567890",
    "q1w2e3r4t5",
    "1q2w3e4r5t",
    "4815162342",
    "0987654321",
    "1234554321",
    "123456789a",
    "12345qwert",
    "123456789q",
    "1111111111",
    "usuckballz1",
];

/// Why `password` will not do for `user`, if it will not: shorter than [`MIN_PASSWORD`]
/// characters, the user's name, or one of the most common passwords (letter case aside).
pub fn password_problem(user: &str, password: &str) -> Option<String> {
    let lower = password.to_lowercase();
    if password.chars().count() < MIN_PASSWORD {
        Some(format!(
            "the password needs at least {MIN_PASSWORD} characters"
        ))
    } else if lower == user.to_lowercase() {
        Some("the password cannot be the user name".into())
    } else if COMMON_LONG.contains(&lower.as_str()) {
        Some("the password is one of the most common ones: choose another".into())
    } else {
        None
    }
}

/// argon2's verify compares in constant time; unknown users cost the same work (DUMMY_HASH).
fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn the_unknown_user_hash_costs_what_a_real_one_does() {
        let real = hash_password("pw").unwrap();
        let real = PasswordHash::new(&real).unwrap();
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
    }

    fn auth() -> Auth {
        Auth::new(
            vec![User {
                name: "admin".into(),
                role: Role::Admin,
                password_hash: Secret(hash_password("pw").unwrap()),
            }],
            Duration::from_secs(3600),
        )
    }

    #[tokio::test]
    async fn login_resume_logout() {
        let a = auth();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (token, s) = a.login(ip, "admin", "pw").await.unwrap();
        assert_eq!(token.len(), 64, "256 bits, hex");
        assert_eq!(s.role, Role::Admin);
        assert_eq!(a.resume(&token).unwrap().user, "admin");
        a.logout(&token);
        assert!(a.resume(&token).is_none());
    }

    fn two_users() -> Auth {
        let hash = hash_password("pw").unwrap();
        Auth::new(
            [("admin", Role::Admin), ("viewer", Role::Viewer)]
                .map(|(name, role)| User {
                    name: name.into(),
                    role,
                    password_hash: Secret(hash.clone()),
                })
                .to_vec(),
            Duration::from_secs(3600),
        )
    }

    #[tokio::test]
    async fn failures_are_limited_per_address_and_name_and_a_success_clears_no_other_name() {
        let a = two_users();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        // 4 wrong admin passwords, a right viewer login, repeated: the admin guesses still
        // count, and the fifth is the last.
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(
                a.login(ip, "admin", "wrong").await.unwrap_err(),
                LoginError::BadCredentials
            );
        }
        a.login(ip, "viewer", "pw").await.unwrap();
        assert_eq!(
            a.login(ip, "admin", "wrong").await.unwrap_err(),
            LoginError::BadCredentials
        );
        a.login(ip, "viewer", "pw").await.unwrap();
        assert!(matches!(
            a.login(ip, "admin", "pw").await,
            Err(LoginError::Limited(_))
        ));
        // Another name from the same address still gets in, and so does admin elsewhere.
        a.login(ip, "viewer", "pw").await.unwrap();
        a.login("10.0.0.3".parse().unwrap(), "admin", "pw")
            .await
            .unwrap();
        // Any names: the address's own limit.
        let ip: IpAddr = "10.0.0.4".parse().unwrap();
        for i in 0..MAX_ADDRESS_FAILURES {
            assert_eq!(
                a.login(ip, &format!("guess{i}"), "x").await.unwrap_err(),
                LoginError::BadCredentials
            );
        }
        assert!(matches!(
            a.login(ip, "viewer", "pw").await,
            Err(LoginError::Limited(_))
        ));
    }

    /// Logins sent at once are counted before their checks run, so they cannot get more than
    /// the limit's worth of guesses checked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logins_sent_at_once_get_no_more_guesses_than_the_limit() {
        let a = std::sync::Arc::new(auth());
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let tries = (0..40).map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.login(ip, "admin", "wrong").await })
        });
        let mut checked = 0;
        for t in tries {
            match t.await.unwrap() {
                Err(LoginError::BadCredentials) => checked += 1,
                Err(LoginError::Limited(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(checked, MAX_FAILURES);
    }

    /// Guesses at one name from many addresses slow every login as that name down, but the
    /// right password still gets in: no lock-out to use against the real admin.
    #[tokio::test(start_paused = true)]
    async fn guesses_at_one_name_from_many_addresses_are_slowed_not_locked_out() {
        let a = auth();
        for i in 0..30u8 {
            let ip = IpAddr::from([10, 1, 0, i]);
            let _ = a.login(ip, "admin", "wrong").await;
        }
        let t = tokio::time::Instant::now();
        a.login("10.2.0.1".parse().unwrap(), "admin", "pw")
            .await
            .unwrap();
        assert!(t.elapsed() >= SLOW_MAX, "{:?}", t.elapsed());
    }
}
