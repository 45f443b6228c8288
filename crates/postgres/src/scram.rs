//! SCRAM-SHA-256 password verifiers computed client-side, so `CREATE ROLE ... PASSWORD` never
//! carries the plain password to the server (nor into its logs).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use pgha_config::Secret;

/// Iterations PostgreSQL uses by default (scram_iterations).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` for `password` with a random salt.
/// ASCII passwords need no SASLprep, which is what we generate; others are used as given.
pub fn verifier(password: &Secret) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    verifier_with_salt(password.expose().as_bytes(), &salt, DEFAULT_ITERATIONS)
}

/// Deterministic form of [`verifier`], for tests and for re-deriving a known secret.
pub fn verifier_with_salt(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2::<Hmac<Sha256>>(password, salt, iterations, &mut salted)
        .expect("HMAC accepts keys of any length"); // cannot fail: HMAC takes any key size
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length"); // cannot fail, as above
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_postgres_verifier() {
        let v = verifier(&Secret::new("pw"));
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert_eq!(v.matches('$').count(), 2);
        let a = verifier_with_salt(b"pw", b"0123456789abcdef", 4096);
        let b = verifier_with_salt(b"pw", b"0123456789abcdef", 4096);
        assert_eq!(a, b);
    }
}
