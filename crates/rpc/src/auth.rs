//! Authentication on the client listener: who a request comes from (docs/security.md).
//!
//! A request proves a user with its password in the `authorization` header
//! (`Basic base64(user:password)`, as HTTP has it; send it over client TLS), or with a
//! client certificate (its common name is the user). Passwords are checked against the
//! SCRAM-SHA-256 stored form the metadata group keeps (`Credential`): PBKDF2-HMAC-SHA-256
//! over the salt, then `H(HMAC(salted, "Client Key"))` compared with the stored key. A
//! password that checked out is remembered (as a SHA-256 of salt and password, per user
//! and credential) so that the next request of the same client costs one hash, not 4096.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

use base64::Engine as _;
use flotilla_metadata::security::Credential;
use flotilla_node::Node;
use flotilla_proto::v1;
use flotilla_raft::RaftTransport;
use flotilla_types::acl::Principal;
use flotilla_types::{ErrorCode, limits};
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use tokio::time::Instant;
use tonic::Request;

/// The header a password travels in.
pub const AUTHORIZATION: &str = "authorization";

/// The mechanism `flotilla user list` names.
pub const MECHANISM: &str = "SCRAM-SHA-256";

const SALT_BYTES: usize = 16;
/// Remembered passwords, at most; past it the memory starts again.
const REMEMBERED_MAX: usize = 10_000;

/// The SCRAM-SHA-256 stored form of `password` with a fresh random salt.
pub fn credential(password: &str) -> Credential {
    let mut salt = vec![0u8; SALT_BYTES];
    ring::rand::SystemRandom::new().fill(&mut salt).expect("the system's random source works");
    credential_with(password, salt, limits::PASSWORD_ITERATIONS)
}

fn credential_with(password: &str, salt: Vec<u8>, iterations: u32) -> Credential {
    let (stored_key, server_key) = keys(password, &salt, iterations);
    Credential { salt, iterations, stored_key, server_key }
}

/// StoredKey and ServerKey (RFC 5802) of a password.
fn keys(password: &str, salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>) {
    let mut salted = [0u8; 32];
    let rounds = NonZeroU32::new(iterations.max(1)).expect("at least one");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, password.as_bytes(), &mut salted);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref()).as_ref().to_vec();
    let server_key = hmac::sign(&key, b"Server Key").as_ref().to_vec();
    (stored_key, server_key)
}

/// Whether `password` is the one `c` was made from.
pub fn verify(c: &Credential, password: &str) -> bool {
    if c.iterations > limits::PASSWORD_ITERATIONS_MAX {
        return false;
    }
    let (stored_key, _) = keys(password, &c.salt, c.iterations);
    same(&stored_key, &c.stored_key)
}

/// Whether two keys are equal, comparing every byte whatever the first difference (no
/// early exit to time).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// The `authorization` header's value for a user and password.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// A user and password from an `authorization` header.
fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, password) =
        String::from_utf8(decoded).ok()?.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some((user, password))
}

fn not_authenticated(message: impl Into<String>) -> v1::Error {
    v1::Error::new(ErrorCode::NotAuthenticated, message)
}

/// A password that checked out: the stored key it was checked against, and a SHA-256 of
/// salt and password.
struct Remembered {
    stored_key: Vec<u8>,
    fingerprint: Vec<u8>,
}

/// Checks requests' credentials, remembering passwords that checked out.
#[derive(Default)]
pub(crate) struct Authenticator {
    /// By user.
    remembered: Mutex<HashMap<String, Remembered>>,
    /// What is left of this second's password checks (`limits::PASSWORD_CHECKS_PER_SEC`).
    budget: Mutex<CheckBudget>,
}

/// A token bucket of password checks: `PASSWORD_CHECKS_PER_SEC` a second, as many at
/// once.
#[derive(Debug, Default)]
struct CheckBudget {
    tokens: f64,
    /// When `tokens` was last topped up (none: never; the bucket starts full).
    at: Option<Instant>,
}

impl CheckBudget {
    /// Takes one check at `now`, if one is left.
    fn take(&mut self, now: Instant) -> bool {
        let rate = f64::from(limits::PASSWORD_CHECKS_PER_SEC);
        self.tokens = match self.at {
            None => rate,
            Some(at) => (self.tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate),
        };
        self.at = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl Authenticator {
    /// Who `req` comes from: the user its password proves, else its client certificate's
    /// common name, else no one. Wrong or malformed credentials are `NOT_AUTHENTICATED`
    /// whether or not authorization is on.
    pub(crate) fn principal<T: RaftTransport, Q>(
        &self,
        node: &Node<T>,
        req: &Request<Q>,
    ) -> Result<Principal, v1::Error> {
        if let Some(value) = req.metadata().get(AUTHORIZATION) {
            let (user, password) = parse_basic(value.as_bytes())
                .ok_or_else(|| not_authenticated("the authorization header is not 'Basic base64(user:password)'"))?;
            return self.check_password(node, &user, &password).map(Principal::User);
        }
        Ok(certified_principal(req).map_or(Principal::Anonymous, Principal::User))
    }

    fn check_password<T: RaftTransport>(
        &self,
        node: &Node<T>,
        user: &str,
        password: &str,
    ) -> Result<String, v1::Error> {
        let wrong = || {
            node.metrics().count_refused_access("unauthenticated");
            not_authenticated(format!("wrong user name or password for '{user}'"))
        };
        if user.len() > limits::USER_NAME_BYTES_MAX || password.len() > limits::PASSWORD_BYTES_MAX {
            return Err(wrong());
        }
        let Some(c) = node.user_credential(user) else { return Err(wrong()) };
        let fingerprint = {
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(&c.salt);
            ctx.update(password.as_bytes());
            ctx.finish().as_ref().to_vec()
        };
        {
            let remembered = self.remembered.lock().expect("authenticator lock");
            if let Some(r) = remembered.get(user)
                && r.stored_key == c.stored_key
            {
                return if same(&r.fingerprint, &fingerprint) { Ok(user.to_string()) } else { Err(wrong()) };
            }
        }
        if !self.budget.lock().expect("authenticator lock").take(Instant::now()) {
            node.metrics().count_refused_access("password_checks");
            return Err(v1::Error::new(
                ErrorCode::Unavailable,
                format!(
                    "this node checks at most {} passwords a second, and more came just now; retry",
                    limits::PASSWORD_CHECKS_PER_SEC
                ),
            ));
        }
        if !verify(&c, password) {
            return Err(wrong());
        }
        let mut remembered = self.remembered.lock().expect("authenticator lock");
        if remembered.len() >= REMEMBERED_MAX {
            remembered.clear();
        }
        remembered.insert(user.to_string(), Remembered { stored_key: c.stored_key.clone(), fingerprint });
        Ok(user.to_string())
    }
}

/// The user a client's certificate proves (its common name), when it presented one
/// (client TLS with `tls-client-ca`). Names longer than a user name may be are cut to
/// that length.
pub(crate) fn certified_principal<Q>(req: &Request<Q>) -> Option<String> {
    let certs = req.peer_certs()?;
    let mut cn = crate::tls::common_name(certs.first()?)?;
    if cn.len() > limits::USER_NAME_BYTES_MAX {
        let mut end = limits::USER_NAME_BYTES_MAX;
        while !cn.is_char_boundary(end) {
            end -= 1;
        }
        cn.truncate(end);
    }
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_checks_its_password_and_no_other() {
        let c = credential("s3cret");
        assert_eq!((c.salt.len(), c.stored_key.len(), c.server_key.len()), (16, 32, 32));
        assert!(verify(&c, "s3cret"));
        assert!(!verify(&c, "s3cret "));
        assert!(!verify(&c, ""));
        assert_ne!(credential("s3cret").salt, c.salt, "every credential has its own salt");
    }

    /// RFC 7677's example exchange (user "user", password "pencil", its salt, 4096
    /// rounds): the ServerKey we store signs the exchange as the RFC's server did, and
    /// the StoredKey we store accepts the RFC's client proof.
    /// Password checks beyond the budget wait for it to refill: a burst of
    /// `PASSWORD_CHECKS_PER_SEC`, then one per 1/rate seconds.
    #[test]
    fn password_checks_are_limited_per_second() {
        let rate = limits::PASSWORD_CHECKS_PER_SEC;
        let t0 = Instant::now();
        let mut b = CheckBudget::default();
        for i in 0..rate {
            assert!(b.take(t0), "check {i} of the first burst");
        }
        assert!(!b.take(t0), "over the budget");
        let step = std::time::Duration::from_secs_f64(1.0 / f64::from(rate));
        assert!(b.take(t0 + step), "one more after 1/rate s");
        assert!(!b.take(t0 + step));
        // Idle for long, it holds no more than one burst.
        let later = t0 + std::time::Duration::from_secs(60);
        assert_eq!((0..rate * 2).filter(|_| b.take(later)).count(), rate as usize);
    }

    #[test]
    fn keys_match_rfc_7677() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = credential_with("pencil", salt, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &c.server_key), auth_message.as_bytes());
        assert_eq!(b64.encode(server_signature.as_ref()), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        let proof = b64.decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").unwrap();
        let client_signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &c.stored_key), auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(client_signature.as_ref()).map(|(a, b)| a ^ b).collect();
        assert_eq!(digest::digest(&digest::SHA256, &client_key).as_ref(), c.stored_key.as_slice());
    }

    #[test]
    fn basic_headers_round_trip_and_junk_is_refused() {
        assert_eq!(parse_basic(basic("alice", "p:w").as_bytes()), Some(("alice".into(), "p:w".into())));
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
        assert_eq!(parse_basic(b"Basic"), None);
        assert_eq!(parse_basic(&[0xff, 0xfe]), None);
        let no_colon = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice"));
        assert_eq!(parse_basic(no_colon.as_bytes()), None);
    }
}
