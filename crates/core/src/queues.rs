//! Queue policies: per tenant and queue name, in the `tern_queues` bucket.
//!
//! Queues exist implicitly (any valid name works); a policy changes how their tasks
//! are retried and may limit how they are dispatched (see [`crate::queue_limits`]).
//! Every process resolves policies from a local mirror of the bucket, so submitting,
//! forwarding or delivering a task never waits for a policy read.

use async_nats::jetstream::kv;
use bytes::Bytes;
use tern_proto::Message;
use tern_proto::v1::{QueueLimits, QueuePolicy, RetryPolicy};
use tokio_util::sync::CancellationToken;

use crate::kv_cache::KvCache;
use crate::task_store::StoreError;

/// The bucket key of a tenant's queue (both are subject tokens, so `.` separates).
pub fn queue_key(tenant_id: &str, queue: &str) -> String {
    format!("{tenant_id}.{queue}")
}

/// Queue policies: the bucket plus a followed local mirror.
#[derive(Clone)]
pub struct Queues {
    store: kv::Store,
    cache: KvCache<QueuePolicy>,
}

impl Queues {
    /// Opens the policies and starts following the bucket.
    pub fn follow(store: kv::Store, shutdown: CancellationToken) -> Self {
        let cache = KvCache::follow(store.clone(), shutdown);
        Self { store, cache }
    }

    /// Waits until every stored policy is known (once, after start).
    pub async fn synced(&self) {
        self.cache.synced().await;
    }

    /// The configured policy of a queue, if any.
    pub fn policy(&self, tenant_id: &str, queue: &str) -> Option<QueuePolicy> {
        self.cache.get(&queue_key(tenant_id, queue))
    }

    /// Every queue whose policy sets a limit: (tenant, queue, limits).
    pub fn limited(&self) -> Vec<(String, String, QueueLimits)> {
        self.cache
            .entries()
            .into_iter()
            .filter_map(|(key, policy)| {
                let limits = policy
                    .limits
                    .filter(|l| crate::queue_limits::is_limited(Some(l)))?;
                let (tenant, queue) = key.split_once('.')?;
                Some((tenant.to_string(), queue.to_string(), limits))
            })
            .collect()
    }

    /// Stores a queue's policy, replacing any earlier one.
    pub async fn put(
        &self,
        tenant_id: &str,
        queue: &str,
        retry: RetryPolicy,
        limits: Option<QueueLimits>,
    ) -> Result<QueuePolicy, StoreError> {
        let key = queue_key(tenant_id, queue);
        let policy = QueuePolicy {
            retry: Some(retry),
            updated_at_ms: crate::now_ms(),
            limits,
        };
        self.store
            .put(&key, Bytes::from(policy.encode_to_vec()))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.cache.insert_local(key, policy);
        Ok(policy)
    }

    /// A tenant's configured queues by name, read from the bucket itself.
    pub async fn list(&self, tenant_id: &str) -> Result<Vec<(String, QueuePolicy)>, StoreError> {
        let prefix = queue_key(tenant_id, "");
        let policies = crate::task_store::list_prefixed(&self.store, &prefix).await?;
        Ok(policies
            .into_iter()
            .map(|(key, policy)| (key[prefix.len()..].to_string(), policy))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_put_the_tenant_first() {
        assert_eq!(super::queue_key("acme", "orders"), "acme.orders");
    }
}
