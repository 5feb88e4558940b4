//! The tenant registry: API key hash → tenant, tenant id → signer.
//!
//! API keys are stored only as SHA-256 hashes, so looking one up means hashing the
//! presented key and finding the digest; a hash lookup leaks nothing about other keys.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::TenantConfig;
use crate::signing::{Signer, SigningSecret};
use crate::tier::Tier;

/// A tenant as the services use it.
#[derive(Debug)]
pub struct Tenant {
    /// Stable id (a NATS subject token).
    pub id: String,
    /// Subscription tier.
    pub tier: Tier,
    /// Signs this tenant's outbound requests with all of its current secrets.
    pub signer: Signer,
}

/// All tenants of the deployment, indexed for the two lookups services make.
#[derive(Debug, Default, Clone)]
pub struct Tenants {
    by_key_hash: HashMap<[u8; 32], Arc<Tenant>>,
    by_id: HashMap<String, Arc<Tenant>>,
}

/// Parses `sha256:<64 hex>` into the digest.
pub fn parse_key_hash(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// The `sha256:<hex>` form of an API key, as configuration stores it.
pub fn hash_api_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

impl Tenants {
    /// Builds the registry; configuration validation has already checked every field.
    pub fn from_config(configs: &[TenantConfig]) -> Result<Self, String> {
        let mut tenants = Tenants::default();
        for config in configs {
            let secrets = config
                .signing_secrets
                .iter()
                .map(|s| SigningSecret::parse(s.expose()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tenant {:?}: {e}", config.id))?;
            let tenant = Arc::new(Tenant {
                id: config.id.clone(),
                tier: config.tier,
                signer: Signer::new(secrets),
            });
            for hash in &config.api_key_hashes {
                let digest = parse_key_hash(hash)
                    .ok_or_else(|| format!("tenant {:?}: bad api key hash", config.id))?;
                if tenants.by_key_hash.insert(digest, tenant.clone()).is_some() {
                    return Err(format!(
                        "tenant {:?}: an api key is shared with another tenant",
                        config.id
                    ));
                }
            }
            tenants.by_id.insert(config.id.clone(), tenant);
        }
        Ok(tenants)
    }

    /// The key's digest (its identity for per-key limits) and its tenant.
    pub fn lookup(&self, api_key: &str) -> Option<([u8; 32], &Arc<Tenant>)> {
        let digest: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        self.by_key_hash.get(&digest).map(|tenant| (digest, tenant))
    }

    /// The tenant with this id, if configured.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(id: &str, key: &str) -> TenantConfig {
        TenantConfig {
            id: id.into(),
            tier: Tier::Developer,
            api_key_hashes: vec![hash_api_key(key)],
            signing_secrets: vec![Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())],
        }
    }

    #[test]
    fn finds_tenants_by_key_and_id() {
        let tenants = Tenants::from_config(&[config("a", "key-a"), config("b", "key-b")]).unwrap();
        assert_eq!(tenants.lookup("key-a").unwrap().1.id, "a");
        assert_eq!(tenants.lookup("key-b").unwrap().1.id, "b");
        assert!(tenants.lookup("key-c").is_none());
        assert!(tenants.lookup("").is_none());
        assert_eq!(tenants.by_id("b").unwrap().tier, Tier::Developer);
    }

    #[test]
    fn refuses_a_key_shared_by_two_tenants() {
        assert!(Tenants::from_config(&[config("a", "same"), config("b", "same")]).is_err());
    }

    #[test]
    fn key_hash_format() {
        assert!(parse_key_hash(&hash_api_key("x")).is_some());
        assert!(parse_key_hash("sha256:zz").is_none());
        assert!(parse_key_hash("4e77").is_none());
    }
}
