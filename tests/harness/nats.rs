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
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port();
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("store");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                store.display()
            ),
        )
        .expect("write nats config");
        let mut server = Self {
            child: None,
            port,
            config,
            _dir: dir,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
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
