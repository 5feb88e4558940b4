//! A real nats-server with JetStream, on a free port with a temporary store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// A nats-server process owned by a test; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    _dir: TempDir,
}

/// The nats-server binary: `$TERN_NATS_SERVER`, the project's `.tools/bin`, or PATH.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TERN_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

impl NatsServer {
    /// Starts a single JetStream server and waits until it answers.
    pub async fn start() -> Self {
        let mut server = Self::prepare(crate::free_port(), "");
        server.spawn().await;
        server
    }

    /// Writes the configuration of a server on `port`; `extra` is appended verbatim.
    fn prepare(port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("store");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n}}\n{extra}",
                store.display()
            ),
        )
        .expect("write nats config");
        Self {
            child: None,
            port,
            config,
            _dir: dir,
        }
    }

    fn spawn_process(&mut self) {
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run `make tools` or set TERN_NATS_SERVER",
                    binary().display()
                )
            });
        self.child = Some(child);
    }

    async fn spawn(&mut self) {
        self.spawn_process();
        let url = self.url();
        crate::wait_until(
            "nats-server to accept JetStream requests",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let client = async_nats::connect(&url).await.ok()?;
                    let js = async_nats::jetstream::new(client);
                    js.query_account().await.ok().map(|_| ())
                }
            },
        )
        .await;
    }

    /// Client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (no clean shutdown), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of three nats-server processes on loopback.
pub struct NatsCluster {
    /// The nodes; kill or restart them individually.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three clustered nodes and waits until JetStream has a leader.
    pub async fn start() -> Self {
        let client_ports: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes: Vec<NatsServer> = (0..3)
            .map(|i| {
                NatsServer::prepare(
                    client_ports[i],
                    &format!(
                        "server_name: n{i}\ncluster {{\n  name: tern-test\n  listen: 127.0.0.1:{}\n  routes: [{routes}]\n}}\n",
                        route_ports[i]
                    ),
                )
            })
            .collect();
        for node in &mut nodes {
            node.spawn_process();
        }
        let cluster = Self { nodes };
        let url = cluster.url();
        // A replicated stream can be created only once the meta group has a leader
        // and all peers are known: try until one succeeds, then remove it.
        crate::wait_until("JetStream cluster to form", Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                let servers: Vec<&str> = url.split(',').collect();
                let client = async_nats::connect(servers.as_slice()).await.ok()?;
                let js = async_nats::jetstream::new(client);
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: "PROBE".into(),
                    subjects: vec!["probe.>".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await
                .ok()?;
                js.delete_stream("PROBE").await.ok().map(|_| ())
            }
        })
        .await;
        cluster
    }

    /// All client URLs, comma separated (what Tern's `nats.url` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
