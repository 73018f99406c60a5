//! Who may see the admin page: the admin key as a bearer token, or a session made by logging in with it.

// Who may see the admin page: the admin key (compared in constant time) as a bearer token, or a session made by
// logging in with it. A session is a random token in an HttpOnly cookie, kept in memory with an expiry; it never
// holds the key, and ends when the key changes.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The session cookie's name.
pub const COOKIE: &str = "gpt_api_admin";
/// How long a session lasts after logging in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; logging in beyond this ends the oldest.
const MAX_SESSIONS: usize = 1024;

type Digest = [u8; 32];

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Whether `presented` is `key`: both hashed first, so the compare takes the same time whatever the lengths.
pub fn key_matches(key: &Secret, presented: &[u8]) -> bool {
    bool::from(sha256(key.expose().as_bytes()).ct_eq(&sha256(presented)))
}

struct Session {
    expires: Instant,
    /// The digest of the admin key it was made with: a session outlives no key change.
    key: Digest,
}

/// The sessions made by logging in, by the digest of their token (so a lookup leaks nothing of a token).
pub struct Sessions {
    map: Mutex<HashMap<Digest, Session>>,
    random: SystemRandom,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions {
            map: Mutex::default(),
            random: SystemRandom::new(),
        }
    }
}

impl Sessions {
    /// A new session for `key`: its token, for the cookie. `None` when the system has no randomness.
    pub fn start(&self, key: &Secret, now: Instant) -> Option<String> {
        let mut token = [0u8; 32];
        self.random.fill(&mut token).ok()?;
        let token = hex(&token);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        let session = Session {
            expires: now + LIFETIME,
            key: sha256(key.expose().as_bytes()),
        };
        map.insert(sha256(token.as_bytes()), session);
        Some(token)
    }

    /// Whether `token` is a live session made with `key`.
    pub fn check(&self, token: &str, key: &Secret, now: Instant) -> bool {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&sha256(token.as_bytes())).is_some_and(|s| {
            s.expires > now && bool::from(s.key.ct_eq(&sha256(key.expose().as_bytes())))
        })
    }

    pub fn end(&self, token: &str) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(&sha256(token.as_bytes()));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    if !header.get(..7)?.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = header.get(7..)?;
    let start = token.iter().position(|b| *b != b' ')?;
    Some(&token[start..])
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        let key = Secret::new("admin-key-1");
        assert!(key_matches(&key, b"admin-key-1"));
        assert!(!key_matches(&key, b"admin-key-"));
        assert!(!key_matches(&key, b"admin-key-12"));
        assert!(!key_matches(&key, b""));
    }

    #[test]
    fn sessions_expire_end_and_die_with_their_key() {
        let sessions = Sessions::default();
        let key = Secret::new("k1");
        let now = Instant::now();
        let token = sessions.start(&key, now).unwrap();
        assert_eq!(token.len(), 64);
        assert!(!token.contains("k1"));
        assert!(sessions.check(&token, &key, now));
        assert!(!sessions.check(&token, &Secret::new("k2"), now));
        assert!(!sessions.check(&token, &key, now + LIFETIME));
        assert!(!sessions.check("nope", &key, now));
        let other = sessions.start(&key, now).unwrap();
        assert_ne!(token, other);
        sessions.end(&token);
        assert!(!sessions.check(&token, &key, now));
        assert!(sessions.check(&other, &key, now));
    }

    #[test]
    fn headers() {
        assert_eq!(cookie("a=1; gpt_api_admin=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("gpt_api_admin_x=1", COOKIE), None);
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert!(set_cookie("t").contains("HttpOnly; SameSite=Strict; Path=/"));
    }
}
