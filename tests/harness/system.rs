//! The four Tern services running in-process against a test nats-server.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tern_core::config::Config;
use tern_core::tenants::hash_api_key;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::NatsServer;

/// A test tenant's credentials.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// Tenant id.
    pub id: &'static str,
    /// Plain API key.
    pub api_key: &'static str,
    /// Signing secret (`whsec_…`).
    pub secret: &'static str,
}

/// Business-tier test tenant.
pub const ACME: Tenant = Tenant {
    id: "acme",
    api_key: "test-key-acme",
    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
};

/// Free-tier test tenant.
pub const GLOBEX: Tenant = Tenant {
    id: "globex",
    api_key: "test-key-globex",
    secret: "whsec_dGVzdC1zZWNyZXQtZ2xvYmV4LTEyMzQ1Njc4",
};

/// Developer-tier test tenant.
pub const INITECH: Tenant = Tenant {
    id: "initech",
    api_key: "test-key-initech",
    secret: "whsec_dGVzdC1zZWNyZXQtaW5pdGVjaC0xMjM0NTY3",
};

/// A second free-tier test tenant (fairness within a tier).
pub const UMBRELLA: Tenant = Tenant {
    id: "umbrella",
    api_key: "test-key-umbrella",
    secret: "whsec_dGVzdC1zZWNyZXQtdW1icmVsbGEtMTIzNDU2",
};

struct Running {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
    }
}

/// A running Tern: ingress, scheduler, delivery worker and callback resolver.
pub struct TernSystem {
    /// The configuration every service got.
    pub config: Config,
    /// Base URL of the public API.
    pub api_url: String,
    /// Base URL of the admin API.
    pub admin_url: String,
    /// Base URL of the callback resolver.
    pub resolver_url: String,
    /// Base URL of the ingress's ops endpoints (`/readyz`, `/metrics`).
    pub ingress_ops_url: String,
    client: reqwest::Client,
    ingress: Option<Running>,
    schedulers: Vec<Running>,
    worker: Option<Running>,
    extra_workers: Vec<Running>,
    resolver: Option<Running>,
}

/// `proxy.secret_key` of the test configuration.
pub const PROXY_KEY: &str = "test-proxy-sealing-key-0123456789abcdef";

/// Admin token of the test configuration.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The test configuration: four tenants (business, developer and two free), loopback allowed, every port ephemeral.
pub fn test_config(nats_url: &str) -> Config {
    Config::from_toml(&test_config_toml(nats_url)).expect("test config")
}

/// The test configuration as TOML (processes read it from a file); later tables in
/// `extra` are not allowed, so callers append plain `[section]` keys via env instead.
pub fn test_config_toml(nats_url: &str) -> String {
    format!(
        r#"
        [nats]
        url = "{nats_url}"
        [ingress]
        listen = "127.0.0.1:0"
        ops_listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        admin_token = "{admin_token}"
        [ingress.rate_limits]
        business = 0
        developer = 0
        free = 0
        [scheduler]
        ops_listen = "127.0.0.1:0"
        [worker]
        ops_listen = "127.0.0.1:0"
        concurrency = 64
        shutdown_grace = "5s"
        ack_wait = "5s"
        [resolver]
        listen = "127.0.0.1:0"
        ops_listen = "127.0.0.1:0"
        rate_limit = 100000
        [outbound]
        allowed_networks = ["127.0.0.0/8", "::1/128"]
        [proxy]
        secret_key = "{proxy_key}"
        [retry]
        max_retries = 3
        initial_delay = "100ms"
        max_delay = "1s"
        timeout = "5s"
        [[tenants]]
        id = "{acme}"
        tier = "business"
        api_key_hashes = ["{acme_hash}"]
        signing_secrets = ["{acme_secret}"]
        [[tenants]]
        id = "{globex}"
        tier = "free"
        api_key_hashes = ["{globex_hash}"]
        signing_secrets = ["{globex_secret}"]
        [[tenants]]
        id = "{initech}"
        tier = "developer"
        api_key_hashes = ["{initech_hash}"]
        signing_secrets = ["{initech_secret}"]
        [[tenants]]
        id = "{umbrella}"
        tier = "free"
        api_key_hashes = ["{umbrella_hash}"]
        signing_secrets = ["{umbrella_secret}"]
        "#,
        acme = ACME.id,
        acme_hash = hash_api_key(ACME.api_key),
        acme_secret = ACME.secret,
        globex = GLOBEX.id,
        globex_hash = hash_api_key(GLOBEX.api_key),
        globex_secret = GLOBEX.secret,
        initech = INITECH.id,
        initech_hash = hash_api_key(INITECH.api_key),
        initech_secret = INITECH.secret,
        umbrella = UMBRELLA.id,
        umbrella_hash = hash_api_key(UMBRELLA.api_key),
        umbrella_secret = UMBRELLA.secret,
        admin_token = ADMIN_TOKEN,
        proxy_key = PROXY_KEY,
    )
}

async fn wait_ready(ops: SocketAddr) {
    let client = crate::http();
    let url = format!("http://{ops}/readyz");
    crate::wait_until("service readiness", Duration::from_secs(30), || {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await;
}

fn spawn<F>(future: F) -> Running
where
    F: FnOnce(CancellationToken) -> JoinHandle<()>,
{
    let stop = CancellationToken::new();
    let handle = future(stop.clone());
    Running { stop, handle }
}

impl TernSystem {
    /// Starts all four services with the test configuration.
    pub async fn start(nats: &NatsServer) -> Self {
        Self::start_with(nats, |_| {}).await
    }

    /// Starts all four services after `tweak` adjusted the configuration.
    pub async fn start_with(nats: &NatsServer, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config(&nats.url());
        // Fix the API port up front so status URLs point where the test can reach them.
        let api_port = crate::free_port();
        config.ingress.listen = ([127, 0, 0, 1], api_port).into();
        config.ingress.public_url = format!("http://127.0.0.1:{api_port}");
        let resolver_port = crate::free_port();
        config.resolver.listen = ([127, 0, 0, 1], resolver_port).into();
        config.resolver.public_url = format!("http://127.0.0.1:{resolver_port}");
        tweak(&mut config);

        let ingress = tern_ingress::Ingress::bind(config.clone())
            .await
            .expect("bind ingress");
        let api_addr = ingress.api_addr().expect("ingress addr");
        let admin_url = format!("http://{}", ingress.admin_addr().expect("admin addr"));
        let ingress_ops = ingress.ops_addr().expect("ingress ops addr");
        let api_url = format!("http://{api_addr}");
        let ingress = spawn(|stop| {
            tokio::spawn(async move {
                if let Err(e) = ingress.run(stop).await {
                    panic!("ingress failed: {e}");
                }
            })
        });
        wait_ready(ingress_ops).await;

        let mut system = Self {
            config,
            api_url,
            admin_url,
            resolver_url: String::new(),
            ingress_ops_url: format!("http://{ingress_ops}"),
            client: crate::http(),
            ingress: Some(ingress),
            schedulers: Vec::new(),
            worker: None,
            extra_workers: Vec::new(),
            resolver: None,
        };
        system.resolver_url = system.config.resolver.public_url.clone();
        system.start_scheduler().await;
        system.start_worker().await;
        system.start_resolver().await;
        system
    }

    /// Starts (again) a scheduler; a second call while one runs adds a replica.
    pub async fn start_scheduler(&mut self) {
        let scheduler = tern_scheduler::Scheduler::bind(self.config.clone())
            .await
            .expect("bind scheduler");
        let ops = scheduler.ops_addr().expect("scheduler ops addr");
        self.schedulers.push(spawn(|stop| {
            tokio::spawn(async move {
                if let Err(e) = scheduler.run(stop).await {
                    panic!("scheduler failed: {e}");
                }
            })
        }));
        wait_ready(ops).await;
    }

    /// Starts (again) a delivery worker.
    pub async fn start_worker(&mut self) {
        self.start_worker_with(|_| {}).await;
    }

    /// Starts a delivery worker whose configuration `tweak` changed.
    pub async fn start_worker_with(&mut self, tweak: impl FnOnce(&mut Config)) {
        let mut config = self.config.clone();
        tweak(&mut config);
        self.worker = Some(Self::run_worker(config).await);
    }

    /// Starts one more delivery worker beside the first (replicas share consumers);
    /// it runs until [`TernSystem::stop`].
    pub async fn start_extra_worker(&mut self) {
        let worker = Self::run_worker(self.config.clone()).await;
        self.extra_workers.push(worker);
    }

    async fn run_worker(config: Config) -> Running {
        let worker = tern_delivery_worker::Worker::bind(config)
            .await
            .expect("bind worker");
        let ops = worker.ops_addr().expect("worker ops addr");
        let running = spawn(|stop| {
            tokio::spawn(async move {
                if let Err(e) = worker.run(stop).await {
                    panic!("worker failed: {e}");
                }
            })
        });
        wait_ready(ops).await;
        running
    }

    /// Stops every scheduler replica gracefully and waits for them.
    pub async fn stop_scheduler(&mut self) {
        for scheduler in self.schedulers.drain(..) {
            scheduler.stop().await;
        }
    }

    /// Stops the callback resolver gracefully and waits for it.
    pub async fn stop_resolver(&mut self) {
        if let Some(resolver) = self.resolver.take() {
            resolver.stop().await;
        }
    }

    /// Starts (again) the callback resolver.
    pub async fn start_resolver(&mut self) {
        let resolver = tern_callback_resolver::Resolver::bind(self.config.clone())
            .await
            .expect("bind resolver");
        let ops = resolver.ops_addr().expect("resolver ops addr");
        self.resolver = Some(spawn(|stop| {
            tokio::spawn(async move {
                if let Err(e) = resolver.run(stop).await {
                    panic!("resolver failed: {e}");
                }
            })
        }));
        wait_ready(ops).await;
    }

    /// Stops the delivery worker gracefully and waits for it.
    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }

    /// Stops every service.
    pub async fn stop(mut self) {
        if let Some(ingress) = self.ingress.take() {
            ingress.stop().await;
        }
        self.stop_scheduler().await;
        for running in [self.worker.take(), self.resolver.take()]
            .into_iter()
            .flatten()
            .chain(std::mem::take(&mut self.extra_workers))
        {
            running.stop().await;
        }
    }

    /// The shared test HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `POST /v1/tasks` with `body` as JSON.
    pub async fn submit(&self, api_key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/tasks", self.api_url))
            .bearer_auth(api_key)
            .json(body)
            .send()
            .await
            .expect("submit request")
    }

    /// An admin API call: status code and JSON body.
    pub async fn admin(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.json_call(&self.admin_url, ADMIN_TOKEN, method, path, body)
            .await
    }

    /// `DELETE /v1/tasks/{id}` with `api_key`: status code and JSON body.
    pub async fn cancel(&self, api_key: &str, id: &str) -> (u16, Value) {
        let path = format!("/v1/tasks/{id}");
        self.call(api_key, http::Method::DELETE, &path, None).await
    }

    /// A public API call with `api_key`: status code and JSON body.
    pub async fn call(
        &self,
        api_key: &str,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.json_call(&self.api_url, api_key, method, path, body)
            .await
    }

    /// `PUT /v1/queues/{name}` as ACME, which must answer 200: the stored policy.
    pub async fn put_queue(&self, name: &str, policy: Value) -> Value {
        let (code, body) = self
            .call(
                ACME.api_key,
                http::Method::PUT,
                &format!("/v1/queues/{name}"),
                Some(&policy),
            )
            .await;
        assert_eq!(code, 200, "{policy}: {body}");
        body
    }

    /// [`put_queue`](Self::put_queue) while the scheduler is stopped: it loads every
    /// policy before it forwards anything, so no task submitted afterwards can be
    /// routed before the policy is seen.
    pub async fn put_queue_first(&mut self, name: &str, policy: Value) -> Value {
        self.stop_scheduler().await;
        let queue = self.put_queue(name, policy).await;
        self.start_scheduler().await;
        queue
    }

    async fn json_call(
        &self,
        base: &str,
        token: &str,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/tasks` that must be accepted: the 202's JSON body.
    pub async fn accepted(&self, api_key: &str, body: &Value) -> Value {
        let response = self.submit(api_key, body).await;
        assert_eq!(response.status().as_u16(), 202, "task not accepted: {body}");
        response.json().await.expect("202 body")
    }

    /// `POST /v1/tasks` that must be accepted: the new task's id.
    pub async fn submit_id(&self, api_key: &str, body: &Value) -> String {
        self.accepted(api_key, body).await["task_id"]
            .as_str()
            .expect("task_id")
            .to_string()
    }

    /// `GET /v1/tasks/{id}`: status code and JSON body.
    pub async fn task(&self, api_key: &str, id: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}/v1/tasks/{id}", self.api_url))
            .bearer_auth(api_key)
            .send()
            .await
            .expect("status request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until task `id` reaches `status`, returning its JSON.
    pub async fn wait_for_status(&self, api_key: &str, id: &str, status: &str) -> Value {
        crate::wait_until(
            &format!("task {id} to become {status}"),
            Duration::from_secs(30),
            || async {
                let (code, body) = self.task(api_key, id).await;
                (code == 200 && body["status"] == status).then_some(body)
            },
        )
        .await
    }
}
