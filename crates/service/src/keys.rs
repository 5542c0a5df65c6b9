//! API keys: how they are made, shown once, and stored only as a hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with, so a leaked key is recognisable in a scan.
pub const KEY_PREFIX: &str = "pl_";

/// The longest `x-api-key` header value looked at; longer ones are invalid
/// without hashing them.
pub const MAX_KEY_LEN: usize = 256;

/// A freshly generated key. The clear text exists only here and on the
/// operator's terminal.
pub struct NewKey {
    pub secret: String,
    pub hash: KeyHash,
}

impl NewKey {
    /// 32 random bytes from the operating system, base64url encoded.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let hash = KeyHash::of(&secret);
        Ok(Self { secret, hash })
    }
}

/// SHA-256 of the key. Keys carry 256 bits of entropy, so a plain hash
/// (rather than a slow password hash) is enough to make a stolen database
/// useless.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// Constant-time comparison, so response timing says nothing about how
    /// much of a guess matched.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_hash_consistently() {
        let a = NewKey::generate().expect("os randomness");
        let b = NewKey::generate().expect("os randomness");
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(KEY_PREFIX));
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + 43);
        assert!(KeyHash::of(&a.secret).matches(&a.hash));
        assert!(!KeyHash::of(&b.secret).matches(&a.hash));
    }
}
