//! One-time callback ids for await-callback tasks, and the durable timers that fail
//! such a task when its callback never comes.
//!
//! A callback id is 32 bytes from a cryptographic RNG, shown as 64 hex
//! characters, and it is the only credential a provider needs, so only its SHA-256 is
//! stored (with the callback's timeout as the entry's TTL) and only a short prefix of
//! that hash is ever logged. The deadline is a JetStream message schedule, so it
//! survives restarts of every process.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tern_proto::Message;
use tern_proto::v1::{CallbackRecord, Timer};

use crate::task_store::StoreError;
use crate::topology::{TIMERS_STREAM, timer_fire_subject, timer_schedule_subject};

/// Length of a callback id in hex characters.
pub const ID_LEN: usize = 64;

/// A fresh callback id: 64 lowercase hex characters from the OS RNG.
pub fn new_id() -> String {
    // ThreadRng is a CSPRNG (ChaCha) seeded and periodically reseeded from the OS.
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// True when `id` has the shape of a callback id (checked before any lookup).
pub fn is_well_formed(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bucket key of a callback id: hex sha256 of its lowercase form.
pub fn key_of(id: &str) -> String {
    hex::encode(Sha256::digest(id.to_ascii_lowercase().as_bytes()))
}

/// What may be logged about a callback: the first 8 characters of its hash.
pub fn log_tag(key: &str) -> &str {
    key.get(..8).unwrap_or(key)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The pending-callbacks bucket and the timers stream.
#[derive(Clone)]
pub struct Callbacks {
    kv: kv::Store,
    js: jetstream::Context,
}

impl Callbacks {
    /// Callbacks over the `tern_callbacks` bucket and JetStream `js`.
    pub fn new(kv: kv::Store, js: jetstream::Context) -> Self {
        Self { kv, js }
    }

    /// Registers callback `key` for a task until `timeout` from now, and schedules
    /// the timer that fails the task then.
    pub async fn register(
        &self,
        key: &str,
        record: &CallbackRecord,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        // KV TTLs are whole seconds and at least one.
        let ttl = Duration::from_secs(timeout.as_secs().max(1));
        self.kv
            .create_with_ttl(key, Bytes::from(record.encode_to_vec()), ttl)
            .await
            .map_err(unavailable)?;
        let due = crate::now_ms() + timeout.as_millis() as i64;
        let timer = Timer {
            task_id: record.task_id.clone(),
            callback_key: key.to_string(),
            traceparent: record.traceparent.clone(),
        };
        crate::schedule::publish_at(
            &self.js,
            timer_schedule_subject(&record.task_id),
            &timer_fire_subject(&record.task_id),
            due,
            timer.encode_to_vec().into(),
        )
        .await
        .map_err(StoreError::Unavailable)
    }

    /// The task waiting for callback `key`, unless it is unknown or expired.
    pub async fn lookup(&self, key: &str) -> Result<Option<CallbackRecord>, StoreError> {
        match self.kv.entry(key).await.map_err(unavailable)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                CallbackRecord::decode(entry.value)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(log_tag(key).to_string(), e))
            }
            _ => Ok(None),
        }
    }

    /// Forgets callback `key` and cancels its task's timer (the task is resolved).
    pub async fn finish(&self, key: &str, task_id: &str) {
        if let Err(e) = self.kv.purge(key).await {
            tracing::warn!(callback = log_tag(key), error = %e, "could not remove a used callback");
        }
        match self.js.get_stream_no_info(TIMERS_STREAM).await {
            Ok(stream) => {
                for subject in [timer_schedule_subject(task_id), timer_fire_subject(task_id)] {
                    if let Err(e) = stream.purge().filter(subject).await {
                        tracing::warn!(task_id, error = %e, "could not cancel a timer");
                    }
                }
            }
            Err(e) => tracing::warn!(task_id, error = %e, "could not cancel a timer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(is_well_formed(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_ids_are_recognised() {
        assert!(!is_well_formed(""));
        assert!(!is_well_formed(&"a".repeat(63)));
        assert!(!is_well_formed(&"g".repeat(64)));
        assert!(!is_well_formed(&format!("{}/", "a".repeat(63))));
    }

    #[test]
    fn keys_hash_the_id_and_tags_reveal_little() {
        let id = new_id();
        let key = key_of(&id);
        assert_eq!(key.len(), 64);
        assert_ne!(key, id);
        assert_eq!(key, key_of(&id.to_uppercase()));
        assert_eq!(log_tag(&key).len(), 8);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives in the callback URL's path is checked and hashed, never
        /// a panic; only 64 hex characters are an id.
        #[test]
        fn any_path_segment_is_checked_safely(input in any::<String>()) {
            let well_formed = is_well_formed(&input);
            prop_assert_eq!(
                well_formed,
                input.len() == ID_LEN && input.chars().all(|c| c.is_ascii_hexdigit())
            );
            let key = key_of(&input);
            prop_assert_eq!(key.len(), 64);
            prop_assert_eq!(log_tag(&key).len(), 8);
            let _ = log_tag(&input);
        }

        /// The id is case-insensitive: providers may upper-case hex.
        #[test]
        fn ids_hash_the_same_in_either_case(bytes in any::<[u8; 32]>()) {
            let id = hex::encode(bytes);
            prop_assert!(is_well_formed(&id));
            prop_assert_eq!(key_of(&id), key_of(&id.to_ascii_uppercase()));
        }
    }

    #[test]
    fn fresh_ids_are_well_formed_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert!(is_well_formed(&a) && is_well_formed(&b));
        assert_ne!(a, b);
    }
}
