//! Tern services as separate OS processes, for tests that kill (-9) and restart them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// Which service a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Public API.
    Ingress,
    /// INTAKE → READY.
    Scheduler,
    /// Deliveries.
    Worker,
    /// Callbacks.
    Resolver,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Ingress => "ingress",
            Service::Scheduler => "scheduler",
            Service::Worker => "delivery-worker",
            Service::Resolver => "callback-resolver",
        }
    }

    fn ops_section(self) -> &'static str {
        match self {
            Service::Ingress => "INGRESS",
            Service::Scheduler => "SCHEDULER",
            Service::Worker => "WORKER",
            Service::Resolver => "RESOLVER",
        }
    }
}

/// One service process; killed on drop.
pub struct ServiceProcess {
    child: Option<Child>,
    /// What it runs.
    pub service: Service,
    /// Its ops endpoint (`/readyz`).
    pub ops_port: u16,
    log: PathBuf,
}

impl ServiceProcess {
    /// Kills the process with SIGKILL, no shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`) for a clean exit; returns its success.
    pub async fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts and restarts service processes sharing one configuration file.
pub struct Processes {
    dir: TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    counter: usize,
}

/// The `tern-proc` binary: cargo builds it beside the test executables' `deps/`
/// folder for every integration test of this package.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps");
    profile_dir.join("tern-proc")
}

impl Processes {
    /// Processes using `config_toml`, plus `TERN_*` environment overrides.
    pub fn new(config_toml: &str, env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("tern.toml");
        std::fs::write(&config, config_toml).expect("write config");
        Self {
            dir,
            config,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            counter: 0,
        }
    }

    /// Starts `service` (with extra env overrides) and waits until it is ready.
    pub async fn start(&mut self, service: Service, extra: &[(&str, String)]) -> ServiceProcess {
        self.counter += 1;
        let ops_port = crate::free_port();
        let log = self
            .dir
            .path()
            .join(format!("{}-{}.log", service.name(), self.counter));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(binary());
        command
            .arg("--config")
            .arg(&self.config)
            .env("TERN_PROC_SERVICE", service.name())
            .env(
                format!("TERN_{}__OPS_LISTEN", service.ops_section()),
                format!("127.0.0.1:{ops_port}"),
            )
            .env("TERN_LOG__FORMAT", "json")
            .env("TERN_LOG__FILTER", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        for (k, v) in &self.env {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn tern-proc");
        let process = ServiceProcess {
            child: Some(child),
            service,
            ops_port,
            log,
        };
        let client = crate::http();
        let url = format!("http://127.0.0.1:{ops_port}/readyz");
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Ok(r) = client.get(&url).send().await
                    && r.status().is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "{} did not become ready; log:\n{}",
            service.name(),
            process.log()
        );
        process
    }
}

/// Ingress, scheduler and a delivery worker as separate processes.
pub struct ProcessSystem {
    /// Starts more processes with the same configuration.
    pub processes: Processes,
    /// The public API process.
    pub ingress: ServiceProcess,
    /// The scheduler process.
    pub scheduler: ServiceProcess,
    /// The worker process (replace it to restart the worker).
    pub worker: ServiceProcess,
    /// The callback resolver process.
    pub resolver: ServiceProcess,
    /// Base URL of the public API.
    pub api_url: String,
    /// Base URL of the callback resolver.
    pub resolver_url: String,
    /// Environment every worker started by [`ProcessSystem::restart_worker`] gets.
    worker_env: Vec<(&'static str, String)>,
}

impl ProcessSystem {
    /// Starts the three services against `nats_url` with `env` overrides for all and
    /// `worker_env` for the worker.
    pub async fn start(
        nats_url: &str,
        env: &[(&str, String)],
        worker_env: &[(&'static str, String)],
    ) -> Self {
        let resolver_port = crate::free_port();
        let resolver_url = format!("http://127.0.0.1:{resolver_port}");
        let mut env = env.to_vec();
        env.push((
            "TERN_RESOLVER__LISTEN",
            format!("127.0.0.1:{resolver_port}"),
        ));
        env.push(("TERN_RESOLVER__PUBLIC_URL", resolver_url.clone()));
        let mut processes = Processes::new(&crate::system::test_config_toml(nats_url), &env);
        let api_port = crate::free_port();
        let api_url = format!("http://127.0.0.1:{api_port}");
        let ingress = processes
            .start(
                Service::Ingress,
                &[
                    ("TERN_INGRESS__LISTEN", format!("127.0.0.1:{api_port}")),
                    ("TERN_INGRESS__PUBLIC_URL", api_url.clone()),
                ],
            )
            .await;
        let scheduler = processes.start(Service::Scheduler, &[]).await;
        let worker = processes.start(Service::Worker, worker_env).await;
        let resolver = processes.start(Service::Resolver, &[]).await;
        Self {
            processes,
            ingress,
            scheduler,
            worker,
            resolver,
            api_url,
            resolver_url,
            worker_env: worker_env.to_vec(),
        }
    }

    /// Everything every process has logged so far.
    pub fn logs(&self) -> String {
        [&self.ingress, &self.scheduler, &self.worker, &self.resolver]
            .iter()
            .map(|p| p.log())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills the worker with SIGKILL and starts a new one.
    pub async fn restart_worker(&mut self) {
        self.worker.kill9();
        self.worker = self
            .processes
            .start(Service::Worker, &self.worker_env)
            .await;
    }
}
