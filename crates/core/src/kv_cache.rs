//! A local, continuously updated copy of a small KV bucket.
//!
//! Queue policies and disabled endpoints are read on every task but change rarely,
//! so each process keeps them in memory and follows the bucket with a watch instead
//! of reading NATS on the hot path. The watch restarts (with a full resync) whenever
//! it breaks, for example across a NATS restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tern_proto::Message;
use tokio_util::sync::CancellationToken;

/// An in-memory mirror of a bucket whose values are protobuf `T`.
pub struct KvCache<T> {
    entries: Arc<RwLock<HashMap<String, T>>>,
    /// Becomes true once the whole bucket has been loaded.
    synced: tokio::sync::watch::Receiver<bool>,
}

impl<T> Clone for KvCache<T> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
            synced: self.synced.clone(),
        }
    }
}

impl<T: Message + Default + Clone + Send + Sync + 'static> KvCache<T> {
    /// Starts following `store` until `shutdown` fires; returns at once.
    pub fn follow(store: kv::Store, shutdown: CancellationToken) -> Self {
        let (loaded, synced) = tokio::sync::watch::channel(false);
        let cache = Self {
            entries: Arc::new(RwLock::new(HashMap::new())),
            synced,
        };
        let entries = cache.entries.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = sync(&store, &entries, &loaded) => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "bucket watch interrupted; resyncing");
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        cache
    }

    /// Waits until the whole bucket has been loaded once (or following stopped), for
    /// callers that must not act on an empty mirror, such as limits after a restart.
    pub async fn synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|loaded| *loaded).await;
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<T> {
        self.read().get(key).cloned()
    }

    /// A copy of every entry (for small buckets that are walked, such as policies).
    pub fn entries(&self) -> Vec<(String, T)> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Calls `f` on every entry (under the read lock: keep `f` short).
    pub fn for_each(&self, mut f: impl FnMut(&str, &T)) {
        for (key, value) in self.read().iter() {
            f(key, value);
        }
    }

    /// Records a write this process just made, so it reads its own writes at once.
    pub fn insert_local(&self, key: String, value: T) {
        self.write().insert(key, value);
    }

    /// Records a delete this process just made.
    pub fn remove_local(&self, key: &str) {
        self.write().remove(key);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, T>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, T>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Loads the whole bucket, swaps it in, then applies live changes until the watch ends.
async fn sync<T: Message + Default>(
    store: &kv::Store,
    entries: &RwLock<HashMap<String, T>>,
    loaded: &tokio::sync::watch::Sender<bool>,
) -> Result<(), String> {
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let initial = store.status().await.map_err(|e| e.to_string())?.values();
    let mut snapshot = Some(HashMap::new());
    if initial == 0 {
        swap_in(entries, &mut snapshot);
        loaded.send_replace(true);
    }
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        let value = match entry.operation {
            kv::Operation::Put => T::decode(entry.value).ok(),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        match snapshot.as_mut() {
            Some(building) => {
                match value {
                    Some(v) => building.insert(entry.key, v),
                    None => building.remove(&entry.key),
                };
                if entry.delta == 0 {
                    swap_in(entries, &mut snapshot);
                    loaded.send_replace(true);
                }
            }
            None => {
                let mut map = entries.write().unwrap_or_else(|p| p.into_inner());
                match value {
                    Some(v) => map.insert(entry.key, v),
                    None => map.remove(&entry.key),
                };
            }
        }
    }
    Err("watch ended".into())
}

fn swap_in<T>(entries: &RwLock<HashMap<String, T>>, snapshot: &mut Option<HashMap<String, T>>) {
    if let Some(fresh) = snapshot.take() {
        *entries.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}
