//! Idempotency keys: the same key with the same request returns the first response.
//!
//! A key is claimed with an atomic KV create-if-absent, so of any number of
//! concurrent duplicates exactly one proceeds; the others see the claim and either
//! replay its result (same request) or get a conflict (different request). Keys are
//! scoped to the tenant and stored hashed, so neither key nor tenant is readable in
//! the bucket, and expire with the bucket's TTL.

use async_nats::jetstream::kv;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tern_proto::Message;
use tern_proto::v1::IdempotencyRecord;

use crate::task_store::StoreError;

/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now ours; finish with [`IdempotencyStore::complete`].
    New {
        /// Revision of our claim, for the completing CAS.
        revision: u64,
    },
    /// An earlier identical request completed with this task.
    Replay {
        /// The task the first request created.
        task_id: String,
    },
    /// An identical request is still being processed.
    InProgress {
        /// When that request claimed the key.
        claimed_at_ms: i64,
        /// Revision of its claim (for taking over an abandoned one).
        revision: u64,
    },
    /// The key was used with a different request.
    Conflict,
    /// The key's earlier use is older than the caller's window: it is free again,
    /// to be taken over at this revision.
    Expired {
        /// Revision of the old claim.
        revision: u64,
    },
}

/// The bucket key for (tenant, client key): hex SHA-256, safe as a KV key.
pub fn storage_key(tenant_id: &str, idempotency_key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tenant_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(idempotency_key.as_bytes());
    hex::encode(hasher.finalize())
}

/// Fingerprint of a request: what must match for a replay.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), body] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

/// True when a client-supplied key is acceptable (printable ASCII, bounded).
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The idempotency bucket.
#[derive(Clone)]
pub struct IdempotencyStore {
    kv: kv::Store,
}

fn encode_claim(fingerprint: &[u8], task_id: &str, completed: bool) -> Bytes {
    IdempotencyRecord {
        fingerprint: Bytes::copy_from_slice(fingerprint),
        task_id: task_id.to_string(),
        completed,
        created_at_ms: crate::now_ms(),
    }
    .encode_to_vec()
    .into()
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl IdempotencyStore {
    /// Wraps the `tern_idempotency` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Claims `key` for a request with `fingerprint` that would create `task_id`.
    /// With a `window`, an earlier use older than it no longer counts (the bucket's
    /// TTL bounds every key anyway).
    pub async fn claim(
        &self,
        key: &str,
        fingerprint: &[u8],
        task_id: &str,
        window: Option<std::time::Duration>,
    ) -> Result<Claim, StoreError> {
        let record = encode_claim(fingerprint, task_id, false);
        match self.kv.create(key, record).await {
            Ok(revision) => return Ok(Claim::New { revision }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.inspect(key, fingerprint, window).await
    }

    /// Reads the current claim of `key` as seen by a request with `fingerprint`.
    pub async fn inspect(
        &self,
        key: &str,
        fingerprint: &[u8],
        window: Option<std::time::Duration>,
    ) -> Result<Claim, StoreError> {
        let Some(entry) = self.kv.entry(key).await.map_err(unavailable)? else {
            // Expired or released between our create and this read: the caller retries.
            return Ok(Claim::InProgress {
                claimed_at_ms: crate::now_ms(),
                revision: 0,
            });
        };
        if entry.operation != kv::Operation::Put {
            return Ok(Claim::InProgress {
                claimed_at_ms: crate::now_ms(),
                revision: entry.revision,
            });
        }
        let existing = IdempotencyRecord::decode(entry.value)
            .map_err(|e| StoreError::Corrupt(key.to_string(), e))?;
        // Only a completed use expires: one still in progress is waited for (or taken
        // over when abandoned) whatever the window.
        if let Some(window) = window
            && existing.completed
            && crate::now_ms().saturating_sub(existing.created_at_ms) > window.as_millis() as i64
        {
            return Ok(Claim::Expired {
                revision: entry.revision,
            });
        }
        Ok(if existing.fingerprint.as_ref() != fingerprint {
            Claim::Conflict
        } else if existing.completed {
            Claim::Replay {
                task_id: existing.task_id,
            }
        } else {
            Claim::InProgress {
                claimed_at_ms: existing.created_at_ms,
                revision: entry.revision,
            }
        })
    }

    /// Replaces an abandoned claim (its owner died) with ours, by CAS on its revision.
    pub async fn take_over(
        &self,
        key: &str,
        abandoned_revision: u64,
        fingerprint: &[u8],
        task_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let record = encode_claim(fingerprint, task_id, false);
        match self.kv.update(key, record, abandoned_revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Marks our claim completed: later identical requests replay `task_id`.
    pub async fn complete(
        &self,
        key: &str,
        revision: u64,
        fingerprint: &[u8],
        task_id: &str,
    ) -> Result<(), StoreError> {
        let record = encode_claim(fingerprint, task_id, true);
        self.kv
            .update(key, record, revision)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Drops our claim after the request failed, so the client's retry can proceed.
    pub async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.kv.purge(key).await.map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_key_scopes_by_tenant() {
        assert_ne!(storage_key("a", "k"), storage_key("b", "k"));
        assert_ne!(storage_key("a", "bk"), storage_key("ab", "k"));
        assert_eq!(storage_key("a", "k").len(), 64);
    }

    #[test]
    fn fingerprint_separates_fields() {
        assert_ne!(
            fingerprint("POST", "/a", b"b"),
            fingerprint("POST", "/ab", b"")
        );
        assert_eq!(
            fingerprint("POST", "/a", b"x"),
            fingerprint("POST", "/a", b"x")
        );
    }

    #[test]
    fn key_validation() {
        assert!(is_valid_key("order-123_ABC:x"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("has space"));
        assert!(!is_valid_key("ünï"));
        assert!(!is_valid_key(&"k".repeat(256)));
    }
}
