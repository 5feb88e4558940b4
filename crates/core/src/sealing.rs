//! Encryption at rest of credentials Tern must keep to use later: the headers of a
//! proxied call (`X-Identity-Key` becomes its `Authorization`) and the headers of
//! route targets (provider credentials).
//!
//! They travel in JetStream messages and live in KV buckets, where anyone with NATS
//! access could read them, so they are sealed with an AEAD (ChaCha20-Poly1305, from
//! `ring`, which the TLS stack already ships) under a key derived from the
//! configuration secret `proxy.secret_key`. The tenant id is the associated data: a
//! sealed blob copied into another tenant's job does not open.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// First byte of every sealed blob, so the format can change later.
const VERSION: u8 = 1;

/// Why a blob could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not a blob this version wrote.
    #[error("sealed data is malformed")]
    Malformed,
    /// Wrong key, wrong tenant, or changed bytes.
    #[error("sealed data does not open with this key (was proxy.secret_key changed?)")]
    Forged,
}

/// Seals and opens with the deployment's proxy key.
#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// The sealer of configuration secret `secret` (any length; it is hashed into the
    /// 256-bit key, so a long passphrase is as good as random bytes of that strength).
    pub fn from_secret(secret: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"tern-seal-v1\0");
        hasher.update(secret.as_bytes());
        let digest = hasher.finalize();
        // A 32-byte key is exactly what ChaCha20-Poly1305 takes, so this cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &digest)
            .unwrap_or_else(|_| unreachable!("32-byte key"));
        Self {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        }
    }

    /// Encrypts `plaintext` for `tenant_id`; a fresh random nonce every time.
    pub fn seal(&self, tenant_id: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut in_out = plaintext.to_vec();
        // Sealing only fails for inputs beyond ChaCha20's 256 GiB limit.
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(tenant_id.as_bytes()),
                &mut in_out,
            )
            .unwrap_or_else(|_| unreachable!("plaintext within AEAD limits"));
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&in_out);
        sealed
    }

    /// Decrypts what [`seal`](Self::seal) produced for `tenant_id`.
    pub fn open(&self, tenant_id: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(tenant_id.as_bytes()), &mut in_out)
            .map_err(|_| SealError::Forged)?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hides_the_plaintext() {
        let sealer = Sealer::from_secret("a test secret");
        let sealed = sealer.seal("acme", b"Bearer sk_live_123");
        assert!(!sealed.windows(b"sk_live".len()).any(|w| w == b"sk_live"));
        assert_eq!(sealer.open("acme", &sealed).unwrap(), b"Bearer sk_live_123");
        assert_ne!(
            sealed,
            sealer.seal("acme", b"Bearer sk_live_123"),
            "fresh nonce"
        );
    }

    #[test]
    fn refuses_other_tenants_keys_and_tampering() {
        let sealer = Sealer::from_secret("a test secret");
        let sealed = sealer.seal("acme", b"secret");
        assert_eq!(sealer.open("globex", &sealed), Err(SealError::Forged));
        assert_eq!(
            Sealer::from_secret("another").open("acme", &sealed),
            Err(SealError::Forged)
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(sealer.open("acme", &tampered), Err(SealError::Forged));
        assert_eq!(sealer.open("acme", b""), Err(SealError::Malformed));
        assert_eq!(sealer.open("acme", &[2, 0, 0]), Err(SealError::Malformed));
    }
}
