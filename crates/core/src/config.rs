//! Configuration: one TOML file plus `TERN_<SECTION>__<KEY>` environment overrides.
//!
//! Every binary loads the same file, so a deployment has one source of truth for
//! tenants, NATS and defaults. Secrets are wrapped in [`Secret`] so that printing the
//! effective configuration at start-up (which every binary does) never leaks them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::backoff::BackoffKind;
use crate::duration::HumanDuration;
use crate::signing::SigningSecret;
use crate::tier::Tier;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment override did not parse.
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// The values parsed but make no sense together.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// A value that must never be printed: Debug, Display and Serialize redact it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }
    /// The secret itself; call sites are where secrets are used, easy to audit.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// The whole configuration of a Tern deployment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// NATS connection and stream replication.
    pub nats: NatsConfig,
    /// Public API service.
    pub ingress: IngressConfig,
    /// Scheduler service.
    pub scheduler: SchedulerConfig,
    /// Delivery workers.
    pub worker: WorkerConfig,
    /// Callback resolver.
    pub resolver: ResolverConfig,
    /// Outbound HTTP safety.
    pub outbound: OutboundConfig,
    /// Default retry policy of queues that set none.
    pub retry: RetryDefaults,
    /// Proxied calls (`POST /v1/proxy`) and routes.
    pub proxy: ProxyConfig,
    /// Logging.
    pub log: LogConfig,
    /// Span export and metric polling.
    pub telemetry: TelemetryConfig,
    /// Async runtime sizing.
    pub runtime: RuntimeConfig,
    /// Tenants and their credentials.
    pub tenants: Vec<TenantConfig>,
}

/// NATS connection settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Replicas of every stream and KV bucket (1 on a laptop, 3 on a cluster).
    pub replicas: usize,
    /// Optional auth token.
    pub token: Option<Secret<String>>,
    /// Optional credentials file (NATS decentralised auth).
    pub credentials_file: Option<PathBuf>,
    /// Retention of dead letters on the DLQ stream.
    pub dlq_max_age: HumanDuration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            replicas: 1,
            token: None,
            credentials_file: None,
            dlq_max_age: HumanDuration(std::time::Duration::from_secs(14 * 86_400)),
        }
    }
}

/// Ingress (public API) settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct IngressConfig {
    /// Public API listener.
    pub listen: SocketAddr,
    /// Health and metrics listener.
    pub ops_listen: SocketAddr,
    /// Admin API listener (DLQ, endpoints); keep it off the public network.
    pub admin_listen: SocketAddr,
    /// Bearer token of the admin API; without one the admin API refuses every call.
    pub admin_token: Option<Secret<String>>,
    /// Bulk re-drives publish at most this many tasks per second.
    pub redrive_rate: u32,
    /// Requests per second per API key, by tier (0 = unlimited).
    pub rate_limits: TierRates,
    /// Base URL clients use; `status_url` and `Location` are built from it.
    pub public_url: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest accepted webhook URL.
    pub max_url_len: usize,
    /// How long the ingress goes on serving after SIGTERM while `/readyz` already
    /// answers 503, so load balancers stop sending before the port closes (on
    /// Kubernetes, endpoint removal reaches them a few seconds after the signal).
    pub shutdown_delay: HumanDuration,
    /// How long in-flight requests may finish once the listeners close (after
    /// `shutdown_delay`); what is still open then is closed.
    pub shutdown_grace: HumanDuration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: HumanDuration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            ops_listen: ([127, 0, 0, 1], 9080).into(),
            admin_listen: ([127, 0, 0, 1], 8081).into(),
            admin_token: None,
            redrive_rate: 100,
            rate_limits: TierRates::default(),
            public_url: "http://127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            max_url_len: 2048,
            // Nothing routes to a local ingress: close at once. Kubernetes sets it.
            shutdown_delay: HumanDuration(std::time::Duration::ZERO),
            // Inside Kubernetes' default 30 s termination grace.
            shutdown_grace: HumanDuration(std::time::Duration::from_secs(20)),
            idempotency_ttl: HumanDuration(std::time::Duration::from_secs(86_400)),
        }
    }
}

/// A number per tier.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TierRates {
    /// Business tier.
    pub business: u32,
    /// Developer tier.
    pub developer: u32,
    /// Free tier.
    pub free: u32,
}

impl TierRates {
    /// The number for `tier`.
    pub fn get(&self, tier: crate::tier::Tier) -> u32 {
        use crate::tier::Tier;
        match tier {
            Tier::Business => self.business,
            Tier::Developer => self.developer,
            Tier::Free => self.free,
        }
    }
}

impl Default for TierRates {
    fn default() -> Self {
        Self {
            business: 1000,
            developer: 200,
            free: 50,
        }
    }
}

/// Scheduler settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Health and metrics listener.
    pub ops_listen: SocketAddr,
    /// Intake messages forwarded concurrently (publish acks in flight).
    pub max_in_flight: usize,
    /// Share of worker capacity per tier when every tier has a backlog.
    pub tier_weights: TierRates,
    /// Intake messages each scheduler buffers per tenant to choose from.
    pub intake_buffer: usize,
    /// How much work (in time at the workers' current pace) to keep queued on READY;
    /// the rest waits in INTAKE where the fair order is still decided.
    pub ready_backlog: HumanDuration,
    /// Fewest messages kept queued on READY, whatever the pace.
    pub ready_backlog_min: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            ops_listen: ([127, 0, 0, 1], 9081).into(),
            max_in_flight: 512,
            tier_weights: TierRates {
                business: 6,
                developer: 3,
                free: 1,
            },
            intake_buffer: 128,
            ready_backlog: HumanDuration(std::time::Duration::from_millis(20)),
            ready_backlog_min: 2,
        }
    }
}

/// Delivery worker settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// Health and metrics listener.
    pub ops_listen: SocketAddr,
    /// Deliveries in flight per process.
    pub concurrency: usize,
    /// How much of a response body is read (and the first 4 KiB of it kept).
    pub max_response_bytes: usize,
    /// TCP connect timeout for outbound calls.
    pub connect_timeout: HumanDuration,
    /// How long in-flight deliveries may finish after SIGTERM.
    pub shutdown_grace: HumanDuration,
    /// How long a pulled message may go unacknowledged before JetStream redelivers
    /// it (a crashed worker's deliveries come back after this); running calls extend
    /// it with progress acks.
    pub ack_wait: HumanDuration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            ops_listen: ([127, 0, 0, 1], 9082).into(),
            concurrency: 512,
            max_response_bytes: 64 * 1024,
            connect_timeout: HumanDuration(std::time::Duration::from_secs(10)),
            shutdown_grace: HumanDuration(std::time::Duration::from_secs(25)),
            ack_wait: HumanDuration(std::time::Duration::from_secs(30)),
        }
    }
}

/// Callback resolver settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ResolverConfig {
    /// Public callback listener.
    pub listen: SocketAddr,
    /// Health and metrics listener.
    pub ops_listen: SocketAddr,
    /// Base URL providers use to reach the resolver.
    pub public_url: String,
    /// Callback requests allowed per source address per `rate_window`.
    pub rate_limit: u32,
    /// The rate limit's window.
    pub rate_window: HumanDuration,
    /// Proxies whose `X-Forwarded-For` is believed (everyone else's is ignored).
    pub trusted_proxies: Vec<IpNet>,
    /// Largest accepted callback body.
    pub max_body_bytes: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8082).into(),
            ops_listen: ([127, 0, 0, 1], 9083).into(),
            public_url: "http://127.0.0.1:8082".into(),
            rate_limit: 30,
            rate_window: HumanDuration(std::time::Duration::from_secs(60)),
            trusted_proxies: Vec::new(),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Outbound HTTP safety settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboundConfig {
    /// Non-public networks that may still be called (loopback for development).
    pub allowed_networks: Vec<IpNet>,
}

/// Proxied calls and routes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// Key (any passphrase, 32+ characters) that seals proxied requests' headers and
    /// route credentials at rest; every service must have the same one. Without it
    /// the proxy API refuses requests.
    pub secret_key: Option<Secret<String>>,
    /// How long an `X-Proxy-Idempotency-Key` returns the first job.
    pub idempotency_window: HumanDuration,
    /// Largest upstream response body (it travels to the callback in a message).
    pub max_response_bytes: usize,
    /// Longest a synchronous proxied call (all its retries) may take.
    pub sync_deadline: HumanDuration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            secret_key: None,
            idempotency_window: HumanDuration(std::time::Duration::from_secs(60)),
            max_response_bytes: 1024 * 1024,
            sync_deadline: HumanDuration(std::time::Duration::from_secs(120)),
        }
    }
}

/// Shortest accepted `proxy.secret_key`.
pub const MIN_PROXY_SECRET_LEN: usize = 32;

/// Retry policy applied when neither queue nor task says otherwise.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryDefaults {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff shape.
    #[serde(
        serialize_with = "serialize_backoff",
        deserialize_with = "deserialize_backoff"
    )]
    pub backoff: BackoffKind,
    /// First retry delay.
    pub initial_delay: HumanDuration,
    /// Cap of any single delay.
    pub max_delay: HumanDuration,
    /// Per-attempt timeout.
    pub timeout: HumanDuration,
    /// Overall deadline; none when absent.
    pub max_age: Option<HumanDuration>,
}

impl Default for RetryDefaults {
    fn default() -> Self {
        Self {
            max_retries: 3,
            backoff: BackoffKind::Exponential,
            initial_delay: HumanDuration(std::time::Duration::from_secs(1)),
            max_delay: HumanDuration(std::time::Duration::from_secs(3600)),
            timeout: HumanDuration(std::time::Duration::from_secs(30)),
            max_age: None,
        }
    }
}

fn serialize_backoff<S: Serializer>(kind: &BackoffKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match kind {
        BackoffKind::Exponential => "exponential",
        BackoffKind::Fixed => "fixed",
    })
}

fn deserialize_backoff<'de, D: Deserializer<'de>>(d: D) -> Result<BackoffKind, D::Error> {
    match String::deserialize(d)?.as_str() {
        "exponential" => Ok(BackoffKind::Exponential),
        "fixed" => Ok(BackoffKind::Fixed),
        other => Err(serde::de::Error::custom(format!(
            "unknown backoff {other:?}: expected exponential or fixed"
        ))),
    }
}

/// Async runtime sizing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Worker threads per process; 0 = one per CPU, 1 = a single-threaded runtime.
    pub worker_threads: usize,
}

/// Log output settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `json`, `pretty`, or `auto` (pretty on a terminal, JSON otherwise).
    pub format: String,
    /// `tracing` filter directive, e.g. `info,tern=debug`; `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "auto".into(),
            filter: "info".into(),
        }
    }
}

/// Span export (OpenTelemetry) and metric polling settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL (`/v1/traces` is appended); when unset, the
    /// standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// decide, and without either no span is exported.
    pub otlp_endpoint: Option<String>,
    /// How often the scheduler reads consumer and dead-letter stream state for the
    /// backlog gauges.
    pub gauge_interval: HumanDuration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            gauge_interval: HumanDuration(std::time::Duration::from_secs(5)),
        }
    }
}

/// One tenant: who may call the API and how its webhooks are signed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TenantConfig {
    /// Stable id; also a NATS subject token, so `[A-Za-z0-9_-]` only.
    pub id: String,
    /// Subscription tier.
    pub tier: Tier,
    /// API keys as `sha256:<hex>` of the key; the keys themselves are never stored.
    pub api_key_hashes: Vec<String>,
    /// Webhook signing secrets (`whsec_…`); several during a rotation, first is newest.
    pub signing_secrets: Vec<Secret<String>>,
}

impl Config {
    /// Loads `path` (when given) and applies `TERN_*` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(
                Env::prefixed("TERN_")
                    .ignore(&["config", "nats_server"])
                    .split("__"),
            )
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document (tests and tools build configurations this way).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as JSON with secrets redacted, for start-up logs.
    pub fn redacted(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.nats.replicas == 0 || self.nats.replicas > 5 {
            return invalid(format!(
                "nats.replicas must be 1..=5, got {}",
                self.nats.replicas
            ));
        }
        if self.worker.ack_wait.get() < std::time::Duration::from_secs(1) {
            return invalid("worker.ack_wait must be at least 1s".into());
        }
        if self.worker.concurrency == 0 {
            return invalid("worker.concurrency must be at least 1".into());
        }
        if self.ingress.redrive_rate == 0 {
            return invalid("ingress.redrive_rate must be at least 1".into());
        }
        if self.scheduler.max_in_flight == 0 {
            return invalid("scheduler.max_in_flight must be at least 1".into());
        }
        if self.telemetry.gauge_interval.get() < std::time::Duration::from_secs(1) {
            return invalid("telemetry.gauge_interval must be at least 1s".into());
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            let scheme = url::Url::parse(endpoint).map(|u| u.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return invalid(format!(
                    "telemetry.otlp_endpoint must be an http(s) URL, got {endpoint:?}"
                ));
            }
        }
        if let Some(key) = &self.proxy.secret_key
            && key.expose().len() < MIN_PROXY_SECRET_LEN
        {
            return invalid(format!(
                "proxy.secret_key must be at least {MIN_PROXY_SECRET_LEN} characters"
            ));
        }
        if self.proxy.max_response_bytes == 0 || self.proxy.max_response_bytes > 2 * 1024 * 1024 {
            return invalid("proxy.max_response_bytes must be 1..=2097152".into());
        }
        let weights = &self.scheduler.tier_weights;
        for (tier, weight) in [
            ("business", weights.business),
            ("developer", weights.developer),
            ("free", weights.free),
        ] {
            if !(1..=1000).contains(&weight) {
                return invalid(format!(
                    "scheduler.tier_weights.{tier} must be 1..=1000, got {weight}"
                ));
            }
        }
        if self.scheduler.intake_buffer == 0 || self.scheduler.ready_backlog_min == 0 {
            return invalid(
                "scheduler.intake_buffer and scheduler.ready_backlog_min must be at least 1".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for tenant in &self.tenants {
            if !crate::topology::is_subject_token(&tenant.id) {
                return invalid(format!(
                    "tenant id {:?} must be 1-64 characters of A-Z a-z 0-9 _ -",
                    tenant.id
                ));
            }
            if !seen.insert(tenant.id.as_str()) {
                return invalid(format!("tenant id {:?} appears twice", tenant.id));
            }
            if tenant.signing_secrets.is_empty() {
                return invalid(format!("tenant {:?} has no signing secret", tenant.id));
            }
            for secret in &tenant.signing_secrets {
                if let Err(e) = SigningSecret::parse(secret.expose()) {
                    return invalid(format!("tenant {:?}: signing secret: {e}", tenant.id));
                }
            }
            for hash in &tenant.api_key_hashes {
                if crate::tenants::parse_key_hash(hash).is_none() {
                    return invalid(format!(
                        "tenant {:?}: api key hash must be sha256:<64 hex digits>",
                        tenant.id
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        [nats]
        url = "nats://example:4222"
        token = "nats-token-value"
        [ingress]
        listen = "0.0.0.0:8080"
        [proxy]
        secret_key = "proxy-secret-key-value-0123456789abcdef"
        [retry]
        max_retries = 5
        backoff = "fixed"
        initial_delay = "2s"
        [[tenants]]
        id = "acme"
        tier = "business"
        api_key_hashes = ["sha256:4e77ea225704194ff7bc8db44fda209149ff222c813fafb895fcd657dd352886"]
        signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
    "#;

    #[test]
    fn parses_file_with_defaults_for_the_rest() {
        let config = Config::from_toml(SAMPLE).unwrap();
        assert_eq!(config.nats.url, "nats://example:4222");
        assert_eq!(config.retry.max_retries, 5);
        assert_eq!(config.retry.backoff, BackoffKind::Fixed);
        assert_eq!(config.ingress.max_body_bytes, 1024 * 1024);
        assert_eq!(config.tenants[0].tier, Tier::Business);
    }

    #[test]
    fn printing_redacts_secrets() {
        let config = Config::from_toml(SAMPLE).unwrap();
        for printed in [config.redacted(), format!("{config:?}")] {
            assert!(
                !printed.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                "{printed}"
            );
            assert!(!printed.contains("nats-token-value"), "{printed}");
            assert!(!printed.contains("proxy-secret-key-value"), "{printed}");
            assert!(printed.contains("<redacted>"));
        }
    }

    #[test]
    fn rejects_bad_tenants() {
        let bad_id = SAMPLE.replace("id = \"acme\"", "id = \"ac.me\"");
        assert!(Config::from_toml(&bad_id).is_err());
        let bad_secret = SAMPLE.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "nope");
        assert!(Config::from_toml(&bad_secret).is_err());
        let bad_hash = SAMPLE.replace("sha256:4e77", "md5:4e77");
        assert!(Config::from_toml(&bad_hash).is_err());
        let short_key = SAMPLE.replace("proxy-secret-key-value-0123456789abcdef", "short");
        assert!(Config::from_toml(&short_key).is_err());
    }

    #[test]
    fn telemetry_is_off_by_default_and_checked_when_set() {
        let config = Config::from_toml(SAMPLE).unwrap();
        assert_eq!(config.telemetry.otlp_endpoint, None);
        assert_eq!(config.telemetry.gauge_interval.get().as_secs(), 5);
        let with = |extra: &str| Config::from_toml(&format!("[telemetry]\n{extra}\n{SAMPLE}"));
        let on = with(r#"otlp_endpoint = "http://collector:4318""#).unwrap();
        assert_eq!(
            on.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        for bad in [
            r#"otlp_endpoint = "collector:4318""#,
            r#"otlp_endpoint = "grpc://collector:4317""#,
            r#"gauge_interval = "100ms""#,
        ] {
            let error = with(bad).unwrap_err().to_string();
            assert!(error.contains("telemetry."), "{bad}: {error}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.toml");
        std::fs::write(&path, SAMPLE).unwrap();
        #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
        figment::Jail::expect_with(|jail| {
            jail.set_env("TERN_NATS__URL", "nats://override:4222");
            jail.set_env("TERN_WORKER__CONCURRENCY", "7");
            let config = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(config.nats.url, "nats://override:4222");
            assert_eq!(config.worker.concurrency, 7);
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Config::load(Some(Path::new("/nonexistent/tern.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
