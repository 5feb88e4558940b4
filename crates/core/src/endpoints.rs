//! Endpoints disabled after answering `410 Gone`.
//!
//! A receiver that says Gone does not want this traffic any more: the task fails at
//! once and the endpoint (tenant + URL) is disabled, so later tasks to it fail fast
//! instead of being retried, until an operator re-enables it. Workers consult a local
//! mirror of the bucket, so the check costs nothing on the hot path.

use async_nats::jetstream::kv;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tern_proto::Message;
use tern_proto::v1::DisabledEndpoint;
use tokio_util::sync::CancellationToken;

use crate::kv_cache::KvCache;
use crate::task_store::StoreError;

/// The bucket key of (tenant, url).
pub fn endpoint_key(tenant_id: &str, url: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tenant_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(url.as_bytes());
    hex::encode(hasher.finalize())
}

/// Disabled endpoints: the bucket plus a followed local mirror.
#[derive(Clone)]
pub struct Endpoints {
    store: kv::Store,
    cache: KvCache<DisabledEndpoint>,
}

impl Endpoints {
    /// Opens the registry and starts following the bucket.
    pub fn follow(store: kv::Store, shutdown: CancellationToken) -> Self {
        let cache = KvCache::follow(store.clone(), shutdown);
        Self { store, cache }
    }

    /// Why (tenant, url) is disabled, if it is.
    pub fn disabled(&self, tenant_id: &str, url: &str) -> Option<DisabledEndpoint> {
        self.cache.get(&endpoint_key(tenant_id, url))
    }

    /// Disables (tenant, url) because of `task_id`'s delivery.
    pub async fn disable(
        &self,
        tenant_id: &str,
        url: &str,
        task_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let key = endpoint_key(tenant_id, url);
        let record = DisabledEndpoint {
            tenant_id: tenant_id.to_string(),
            url: url.to_string(),
            disabled_at_ms: crate::now_ms(),
            task_id: task_id.to_string(),
            reason: reason.to_string(),
        };
        self.store
            .put(&key, Bytes::from(record.encode_to_vec()))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.cache.insert_local(key, record);
        Ok(())
    }

    /// Re-enables (tenant, url); false when it was not disabled.
    pub async fn enable(&self, tenant_id: &str, url: &str) -> Result<bool, StoreError> {
        let key = endpoint_key(tenant_id, url);
        let existed = matches!(
            self.store.entry(&key).await,
            Ok(Some(entry)) if entry.operation == kv::Operation::Put
        );
        if existed {
            self.store
                .purge(&key)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        self.cache.remove_local(&key);
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_key;

    #[test]
    fn keys_separate_tenants_and_urls() {
        assert_ne!(
            endpoint_key("a", "http://x/"),
            endpoint_key("b", "http://x/")
        );
        assert_ne!(
            endpoint_key("a", "http://x/1"),
            endpoint_key("a", "http://x/2")
        );
        assert_eq!(endpoint_key("a", "u").len(), 64);
    }
}
