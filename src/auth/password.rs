//! Passwords: bcrypt hashes as etcd stores them, and a cache of successful checks.
//!
//! A password is hashed once, on the member that receives `UserAdd` or `UserChangePassword`, before
//! the request is proposed (etcd 3.5's `hashedPassword`): the log, the backend and every member hold
//! only the hash, and applying the entry costs no bcrypt. Hashes use `--bcrypt-cost` (etcd's default
//! 10: tens of milliseconds per hash, deliberately).
//!
//! Checking a password costs the same, on every `Authenticate` and on every REST request with HTTP
//! Basic credentials. [`Verifier`] remembers checks that succeeded, keyed by a SHA-256 of a
//! per-process random secret, the stored hash and the password: a hit means this exact password was
//! already verified against this exact hash, so the answer cannot change, and the cache holds no
//! password or anything that reveals one without the secret. A changed password has a new hash (new
//! salt), so old entries never match it. Failures are never cached: a guess always pays full price.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// etcd's default `--bcrypt-cost`.
pub const DEFAULT_BCRYPT_COST: u32 = 10;
/// Most remembered checks; the cache starts over when full.
const CACHED_CHECKS: usize = 4096;

/// `password` hashed with bcrypt at `cost`.
pub fn hash(password: &str, cost: u32) -> Result<String> {
    bcrypt::hash(password, cost).map_err(|e| Error::InvalidArgument(format!("bcrypt: {e}")))
}

/// Checks passwords against stored hashes, remembering the successes.
pub struct Verifier {
    secret: [u8; 32],
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// A verifier with a fresh random secret and nothing remembered.
    pub fn new() -> Verifier {
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        Verifier {
            secret,
            verified: Mutex::new(HashSet::new()),
        }
    }

    fn digest(&self, stored: &[u8], password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update((stored.len() as u64).to_be_bytes());
        h.update(stored);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `password` matches the bcrypt hash `stored`. Blocks for a bcrypt check unless this
    /// pair was verified before; call it off the async threads when it may.
    pub fn check(&self, stored: &[u8], password: &str) -> bool {
        let key = self.digest(stored, password);
        let set = || self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if set().contains(&key) {
            return true;
        }
        let ok = std::str::from_utf8(stored)
            .ok()
            .and_then(|h| bcrypt::verify(password, h).ok())
            .unwrap_or(false);
        if ok {
            let mut set = set();
            if set.len() >= CACHED_CHECKS {
                set.clear();
            }
            set.insert(key);
        }
        ok
    }

    /// Whether `check(stored, password)` would answer without running bcrypt.
    pub fn is_cached(&self, stored: &[u8], password: &str) -> bool {
        let key = self.digest(stored, password);
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_caches_only_successes() {
        let v = Verifier::new();
        let stored = hash("secret", 4).expect("hash");
        assert!(stored.starts_with("$2"));
        assert!(!v.check(stored.as_bytes(), "wrong"));
        assert!(
            !v.is_cached(stored.as_bytes(), "wrong"),
            "failures are not cached"
        );
        assert!(!v.is_cached(stored.as_bytes(), "secret"));
        assert!(v.check(stored.as_bytes(), "secret"));
        assert!(v.is_cached(stored.as_bytes(), "secret"));
        assert!(v.check(stored.as_bytes(), "secret"));
        // Another hash of the same password (a changed password) is checked afresh.
        let again = hash("secret", 4).expect("hash");
        assert!(!v.is_cached(again.as_bytes(), "secret"));
        assert!(!v.check(b"not a hash", "secret"));
        assert!(!v.check(b"", ""), "a user without a password never matches");
    }
}
