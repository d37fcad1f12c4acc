//! Auth tokens: what `Authenticate` hands out and every later request carries (`--auth-token`).
//!
//! - **simple** (etcd's default): a random 16-letter string and a sequence number. The member that
//!   authenticates proposes the token through Raft, so every member knows it and a client may send
//!   it to any of them. Each member forgets a token `--auth-token-ttl` after its last use there
//!   (etcd's TTL keeper), and every token of a user whose password changed or who was deleted, and
//!   all of them when auth is disabled. Tokens live in memory only: after a restart clients
//!   authenticate again, as with etcd.
//! - **jwt**: a signed JSON Web Token with etcd's claims (`username`, `revision`, `exp`), from
//!   `--auth-token jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m`. Nothing is shared or
//!   stored: any member with the public key checks it. A member without `priv-key` verifies tokens but
//!   cannot issue them.
//!
//! Time comes from a [`Clock`], so tests expire simple tokens without sleeping.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lease::Clock;

/// etcd's default `--auth-token-ttl`: 300 seconds.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// etcd's default JWT lifetime (`ttl=` in `--auth-token jwt,...`): 5 minutes.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Letters in a simple token's random part (etcd's `defaultSimpleTokenLength`).
const SIMPLE_TOKEN_LETTERS: usize = 16;
/// Sweep expired simple tokens every this many new ones, so forgotten tokens do not pile up.
const SWEEP_EVERY: u64 = 1024;

/// The token kind and its settings, parsed from `--auth-token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenConfig {
    /// `simple`.
    Simple,
    /// `jwt,...`.
    Jwt {
        /// The signing algorithm (`sign-method`).
        algorithm: Algorithm,
        /// The key that verifies (`pub-key`; for HMAC, the shared secret).
        public_key: PathBuf,
        /// The key that signs (`priv-key`), if this member issues tokens.
        private_key: Option<PathBuf>,
        /// How long an issued token is valid (`ttl`).
        ttl: Duration,
    },
}

impl TokenConfig {
    /// Parses etcd's `--auth-token` value: `simple`, or `jwt` with comma-separated `key=value`
    /// options.
    pub fn parse(s: &str) -> std::result::Result<TokenConfig, String> {
        let mut parts = s.split(',');
        match parts.next().map(str::trim) {
            Some("simple") if parts.next().is_none() => Ok(TokenConfig::Simple),
            Some("jwt") => {
                let (mut algorithm, mut public_key, mut private_key, mut ttl) =
                    (None, None, None, DEFAULT_JWT_TTL);
                for opt in parts {
                    let (k, v) = opt
                        .split_once('=')
                        .ok_or_else(|| format!("--auth-token: option {opt:?} is not key=value"))?;
                    match k.trim() {
                        "pub-key" => public_key = Some(PathBuf::from(v)),
                        "priv-key" => private_key = Some(PathBuf::from(v)),
                        "sign-method" => {
                            algorithm = Some(v.parse::<Algorithm>().map_err(|_| {
                                format!("--auth-token: unknown sign-method {v:?}")
                            })?)
                        }
                        "ttl" => {
                            ttl = crate::config::parse_go_duration(v)
                                .ok_or_else(|| format!("--auth-token: ttl {v:?} is not a duration"))?
                        }
                        other => return Err(format!("--auth-token: unknown option {other:?}")),
                    }
                }
                let algorithm =
                    algorithm.ok_or("--auth-token jwt needs sign-method=... (RS256, ES256, ...)")?;
                let public_key = match (public_key, &private_key, algorithm) {
                    (Some(p), _, _) => p,
                    // An HMAC secret both signs and verifies.
                    (None, Some(p), Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                        p.clone()
                    }
                    _ => return Err("--auth-token jwt needs pub-key=FILE".into()),
                };
                Ok(TokenConfig::Jwt {
                    algorithm,
                    public_key,
                    private_key,
                    ttl,
                })
            }
            _ => Err(format!(
                "--auth-token: {s:?} is neither simple nor jwt,pub-key=...,priv-key=...,sign-method=..."
            )),
        }
    }
}

/// A request's verified identity: the user, and the auth revision its permissions were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    /// The user name.
    pub name: String,
    /// The auth store's revision the identity is valid for.
    pub revision: u64,
}

/// The token kind this member runs.
pub enum Tokens {
    /// Simple tokens, agreed through Raft.
    Simple(SimpleTokens),
    /// Signed tokens.
    Jwt(JwtTokens),
}

impl Tokens {
    /// The provider `config` asks for; key files are read now (an unreadable key refuses the start).
    pub fn new(config: &TokenConfig, ttl: Duration, clock: Arc<dyn Clock>) -> Result<Tokens> {
        Ok(match config {
            TokenConfig::Simple => Tokens::Simple(SimpleTokens::new(ttl, clock)),
            TokenConfig::Jwt {
                algorithm,
                public_key,
                private_key,
                ttl,
            } => Tokens::Jwt(JwtTokens::new(
                *algorithm,
                public_key,
                private_key.as_deref(),
                *ttl,
            )?),
        })
    }
}

/// A simple token's owner and when it lapses.
struct Simple {
    user: String,
    deadline: Instant,
}

/// The simple tokens this member knows.
pub struct SimpleTokens {
    /// Token -> owner. A std mutex: lookups and inserts only.
    tokens: Mutex<HashMap<String, Simple>>,
    /// Idle time after which a token is forgotten.
    ttl: Duration,
    clock: Arc<dyn Clock>,
    /// Tokens generated by this member: the sequence number in each.
    issued: AtomicU64,
    /// Tokens assigned: every [`SWEEP_EVERY`]th assignment sweeps out lapsed ones.
    assigned: AtomicU64,
}

impl SimpleTokens {
    fn new(ttl: Duration, clock: Arc<dyn Clock>) -> SimpleTokens {
        SimpleTokens {
            tokens: Mutex::new(HashMap::new()),
            ttl,
            clock,
            issued: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Simple>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh token (not yet known: it becomes valid when its proposal is applied).
    pub fn generate(&self, member_id: u64) -> String {
        let mut rng = rand::thread_rng();
        let letters: String = (0..SIMPLE_TOKEN_LETTERS)
            .map(|_| {
                let c = rng.gen_range(0..52u8);
                char::from(if c < 26 { b'a' + c } else { b'A' + c - 26 })
            })
            .collect();
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        format!("{letters}.{:x}{n}", member_id & 0xffff)
    }

    /// Makes `token` valid for `user` (an applied Authenticate).
    pub fn assign(&self, token: &str, user: &str) {
        let now = self.clock.now();
        let mut map = self.map();
        if self.assigned.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            map.retain(|_, t| t.deadline > now);
        }
        map.insert(
            token.to_string(),
            Simple {
                user: user.to_string(),
                deadline: now + self.ttl,
            },
        );
    }

    /// The owner of `token`, if it is known and not lapsed; using it restarts its TTL.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = self.clock.now();
        let mut map = self.map();
        match map.get_mut(token) {
            Some(t) if t.deadline > now => {
                t.deadline = now + self.ttl;
                Some(t.user.clone())
            }
            Some(_) => {
                map.remove(token);
                None
            }
            None => None,
        }
    }

    /// Forgets every token of `user`.
    pub fn invalidate_user(&self, user: &str) {
        self.map().retain(|_, t| t.user != user);
    }

    /// Forgets every token.
    pub fn clear(&self) {
        self.map().clear();
    }
}

/// etcd's JWT claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signs and verifies JSON Web Tokens.
pub struct JwtTokens {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

fn read_key(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "--auth-token: cannot read key {}: {e}",
            path.display()
        ))
    })
}

fn key_error(path: &std::path::Path, e: jsonwebtoken::errors::Error) -> Error {
    Error::InvalidArgument(format!(
        "--auth-token: {} is not a key for this sign-method: {e}",
        path.display()
    ))
}

impl JwtTokens {
    fn new(
        algorithm: Algorithm,
        public: &std::path::Path,
        private: Option<&std::path::Path>,
        ttl: Duration,
    ) -> Result<JwtTokens> {
        use Algorithm::*;
        let pub_bytes = read_key(public)?;
        let decoding = match algorithm {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(&pub_bytes),
            ES256 | ES384 => DecodingKey::from_ec_pem(&pub_bytes),
            EdDSA => DecodingKey::from_ed_pem(&pub_bytes),
            HS256 | HS384 | HS512 => DecodingKey::from_secret(&pub_bytes),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--auth-token: sign-method {other:?} is not supported"
                )))
            }
        }
        .map_err(|e| key_error(public, e))?;
        let encoding = match private {
            None => None,
            Some(path) => {
                let bytes = read_key(path)?;
                Some(
                    match algorithm {
                        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                            EncodingKey::from_rsa_pem(&bytes)
                        }
                        ES256 | ES384 => EncodingKey::from_ec_pem(&bytes),
                        EdDSA => EncodingKey::from_ed_pem(&bytes),
                        HS256 | HS384 | HS512 => EncodingKey::from_secret(&bytes),
                        other => {
                            return Err(Error::InvalidArgument(format!(
                                "--auth-token: sign-method {other:?} is not supported"
                            )))
                        }
                    }
                    .map_err(|e| key_error(path, e))?,
                )
            }
        };
        Ok(JwtTokens {
            algorithm,
            encoding,
            decoding,
            ttl,
        })
    }

    /// A signed token for `user` at auth revision `revision`.
    pub fn issue(&self, user: &str, revision: u64) -> Result<String> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            Error::Unimplemented(
                "etcdserver: this member verifies JWTs but has no priv-key to issue them".into(),
            )
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: (now + self.ttl).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| Error::Internal(format!("signing a JWT: {e}")))
    }

    /// The identity in `token`, if its signature is ours and it has not expired.
    pub fn verify(&self, token: &str) -> Option<AuthInfo> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        Some(AuthInfo {
            name: data.claims.username,
            revision: data.claims.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::ManualClock;

    #[test]
    fn simple_tokens_lapse_after_their_ttl_of_disuse() {
        let clock = Arc::new(ManualClock::new());
        let tokens = SimpleTokens::new(Duration::from_secs(5), clock.clone());
        let t = tokens.generate(1);
        assert_eq!(tokens.user(&t), None, "not valid before it is assigned");
        tokens.assign(&t, "alice");
        clock.advance(Duration::from_secs(4));
        assert_eq!(tokens.user(&t).as_deref(), Some("alice"));
        // The use above restarted the TTL.
        clock.advance(Duration::from_secs(4));
        assert_eq!(tokens.user(&t).as_deref(), Some("alice"));
        clock.advance(Duration::from_secs(6));
        assert_eq!(tokens.user(&t), None, "idle longer than the TTL");
        let t2 = tokens.generate(1);
        assert_ne!(t, t2);
        tokens.assign(&t2, "bob");
        tokens.invalidate_user("bob");
        assert_eq!(tokens.user(&t2), None);
    }

    #[test]
    fn auth_token_flag_parses_as_etcd_writes_it() {
        assert_eq!(TokenConfig::parse("simple"), Ok(TokenConfig::Simple));
        let jwt = TokenConfig::parse("jwt,pub-key=a.pub,priv-key=a.key,sign-method=RS256,ttl=10m")
            .expect("jwt");
        assert_eq!(
            jwt,
            TokenConfig::Jwt {
                algorithm: Algorithm::RS256,
                public_key: "a.pub".into(),
                private_key: Some("a.key".into()),
                ttl: Duration::from_secs(600),
            }
        );
        assert!(TokenConfig::parse("jwt,pub-key=a.pub").is_err());
        assert!(TokenConfig::parse("jwt,sign-method=XX1,pub-key=a").is_err());
        assert!(TokenConfig::parse("opaque").is_err());
    }

    #[test]
    fn jwt_round_trip_and_forgeries() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret for the test").expect("write");
        let other = dir.path().join("other");
        std::fs::write(&other, b"another secret").expect("write");
        let ttl = Duration::from_secs(60);
        let ours = JwtTokens::new(Algorithm::HS256, &secret, Some(&secret), ttl).expect("keys");
        let theirs = JwtTokens::new(Algorithm::HS256, &other, Some(&other), ttl).expect("keys");
        let t = ours.issue("alice", 7).expect("issue");
        assert_eq!(
            ours.verify(&t),
            Some(AuthInfo {
                name: "alice".into(),
                revision: 7
            })
        );
        assert_eq!(ours.verify(&theirs.issue("alice", 7).expect("issue")), None);
        assert_eq!(ours.verify("not.a.token"), None);
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                username: "alice".into(),
                revision: 7,
                exp: 1,
            },
            &EncodingKey::from_secret(b"a shared secret for the test").expect("key"),
        )
        .expect("encode");
        assert_eq!(ours.verify(&expired), None, "expired");
    }
}
