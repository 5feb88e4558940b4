//! `ternctl` against a running Tern: the built program (`ternctl-e2e`, the same
//! entry point as the `ternctl` binary) run as a process, its output and exit code
//! checked.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tern_tests::system::{ACME, ADMIN_TOKEN, GLOBEX};
use tern_tests::{NatsServer, Receiver, TernSystem, free_port};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// What one run of `ternctl` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The run succeeded; its standard output.
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "ternctl failed: {self:?}");
        assert!(self.stderr.is_empty(), "nothing on stderr: {self:?}");
        self.stdout
    }

    /// The run succeeded; its standard output as JSON.
    fn json(self) -> Value {
        let stdout = self.ok();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    /// The run failed with an error line starting with `prefix`.
    fn failed_with(self, prefix: &str) {
        assert_ne!(self.code, 0, "ternctl should fail: {self:?}");
        assert!(
            self.stderr.starts_with(prefix),
            "stderr should start with {prefix:?}: {self:?}"
        );
    }
}

/// Runs `ternctl args` in `cwd` with exactly the environment `env`.
async fn ternctl(cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    ternctl_with_stdin(cwd, env, args, None).await
}

/// [`ternctl`] reading `stdin` (nothing, when `None`) on its standard input.
async fn ternctl_with_stdin(
    cwd: &Path,
    env: &[(&str, String)],
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Run {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl-e2e"))
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run ternctl");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        match pipe.write_all(input).await {
            // It may exit without reading (a usage error); its exit code tells.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.expect("write ternctl's stdin"),
        }
        // Dropping the pipe closes it: ternctl reads to the end of its input.
        drop(pipe);
    }
    let output = child.wait_with_output().await.expect("run ternctl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The environment `source .tern/dev.env` gives, for `system` and tenant acme.
fn dev_env(system: &TernSystem) -> Vec<(&'static str, String)> {
    vec![
        ("TERN_URL", system.api_url.clone()),
        ("TERN_API_KEY", ACME.api_key.to_string()),
        ("TERN_ADMIN_URL", system.admin_url.clone()),
        ("TERN_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
    ]
}

/// The value of `key: value` in a key/value block.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
}

/// The rows of a table whose first cell is `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in {table}"))
        .split_whitespace()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_submitted_shown_listed_and_cancelled() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = dev_env(&system);
    let url = receiver.url("/hook");

    // A delayed task waits as `scheduled`, so it can be cancelled.
    let accepted = ternctl(
        dir.path(),
        &env,
        &[
            "tasks",
            "submit",
            "--webhook-url",
            &url,
            "--delay",
            "1h",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(accepted["status"], "queued");
    let delayed = accepted["task_id"].as_str().expect("task_id").to_string();
    let shown = ternctl(dir.path(), &env, &["tasks", "get", &delayed])
        .await
        .ok();
    assert_eq!(field(&shown, "task"), delayed);
    assert_eq!(field(&shown, "status"), "scheduled");
    assert_eq!(field(&shown, "webhook url"), url);
    let cancelled = ternctl(dir.path(), &env, &["tasks", "cancel", &delayed])
        .await
        .ok();
    assert_eq!(field(&cancelled, "status"), "cancelled");
    ternctl(dir.path(), &env, &["tasks", "cancel", &delayed])
        .await
        .failed_with("error: conflict: task is cancelled and can no longer be cancelled\n");
    let json = ternctl(dir.path(), &env, &["tasks", "get", &delayed, "--json"])
        .await
        .json();
    assert_eq!(json["status"], "cancelled");

    // A task delivered at once, with the human-readable answer.
    let submit = [
        "tasks",
        "submit",
        "--webhook-url",
        &url,
        "--queue",
        "orders",
        "--payload",
        r#"{"order":1001}"#,
        "--idempotency-key",
        "order-1001",
    ];
    let submitted = ternctl(dir.path(), &env, &submit).await.ok();
    let delivered = field(&submitted, "task").to_string();
    assert_eq!(field(&submitted, "status"), "queued");
    assert!(field(&submitted, "status url").ends_with(&delivered));
    assert!(!submitted.contains("replayed"), "{submitted}");
    let done = system
        .wait_for_status(ACME.api_key, &delivered, "succeeded")
        .await;
    assert_eq!(receiver.requests()[0].json()["payload"]["order"], 1001);
    let replay = ternctl(dir.path(), &env, &submit).await.ok();
    assert_eq!(field(&replay, "task"), delivered);
    assert!(field(&replay, "replayed").starts_with("yes"), "{replay}");
    let shown = ternctl(dir.path(), &env, &["tasks", "get", &delivered])
        .await
        .ok();
    assert_eq!(field(&shown, "status"), "succeeded");
    assert_eq!(
        field(&shown, "result"),
        format!("200 in {} ms", done["result"]["duration"])
    );
    assert_eq!(
        row(&shown, "1")[4],
        "200",
        "attempt 1 answered 200: {shown}"
    );

    // Listing looks the given ids up; an unknown one is reported and fails the run.
    let unknown = "01900000-0000-7000-8000-000000000000";
    let listed = ternctl(dir.path(), &env, &["tasks", "list", &delayed, &delivered])
        .await
        .ok();
    assert_eq!(row(&listed, &delayed)[1], "cancelled");
    assert_eq!(row(&listed, &delivered)[1..4], ["succeeded", "orders", "1"]);
    let partly = ternctl(dir.path(), &env, &["tasks", "list", &delivered, unknown]).await;
    assert_eq!(partly.code, 1, "{partly:?}");
    assert!(
        row(&partly.stdout, unknown)
            .join(" ")
            .contains("not_found: no task"),
        "{partly:?}"
    );
    let listed = ternctl(
        dir.path(),
        &env,
        &["tasks", "list", "--json", &delayed, &delivered],
    )
    .await
    .json();
    let statuses: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["cancelled", "succeeded"]);

    // Invalid input: the API's error, nothing accepted.
    ternctl(
        dir.path(),
        &env,
        &["tasks", "submit", "--webhook-url", "ftp://x/y"],
    )
    .await
    .failed_with("error: validation_failed: webhook_url");
    ternctl(dir.path(), &env, &["tasks", "get", "not-a-task"])
        .await
        .failed_with("error: not_found: no task \"not-a-task\"\n");
    assert_eq!(receiver.count(), 1);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_schedules_are_set_shown_and_deleted() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = dev_env(&system);

    let set = ternctl(
        dir.path(),
        &env,
        &[
            "queues",
            "set",
            "orders",
            "--max-retries",
            "5",
            "--timeout",
            "5s",
            "--rate-limit",
            "2",
            "--max-concurrent",
            "3",
        ],
    )
    .await
    .ok();
    assert_eq!(field(&set, "configured"), "yes");
    assert_eq!(field(&set, "max concurrent"), "3");
    let queue = ternctl(dir.path(), &env, &["queues", "get", "orders", "--json"])
        .await
        .json();
    assert_eq!(queue["max_retries"], 5);
    assert_eq!(queue["timeout"], "5s");
    assert_eq!(queue["rate_limit"]["per_second"], 2.0);
    assert_eq!(queue["max_concurrent"], 3);
    let fresh = ternctl(dir.path(), &env, &["queues", "get", "fresh"])
        .await
        .ok();
    assert_eq!(field(&fresh, "configured"), "no (defaults)");
    assert_eq!(field(&fresh, "rate limit"), "unlimited");
    let listed = ternctl(dir.path(), &env, &["queues", "list"]).await.ok();
    assert_eq!(row(&listed, "orders")[1], "5");
    assert!(!listed.contains("fresh"), "{listed}");
    ternctl(
        dir.path(),
        &env,
        &["queues", "set", "orders", "--max-retries", "500"],
    )
    .await
    .failed_with("error: validation_failed: max_retries");
    let unchanged = ternctl(dir.path(), &env, &["queues", "get", "orders", "--json"])
        .await
        .json();
    assert_eq!(
        unchanged["max_retries"], 5,
        "a refused policy changes nothing"
    );

    let created = ternctl(
        dir.path(),
        &env,
        &[
            "schedules",
            "create",
            "--cron",
            "0 0 1 1 *",
            "--timezone",
            "Europe/Paris",
            "--webhook-url",
            "http://127.0.0.1:9/never",
            "--queue",
            "reports",
            "--json",
        ],
    )
    .await
    .json();
    let id = created["schedule_id"]
        .as_str()
        .expect("schedule_id")
        .to_string();
    assert_eq!(created["task"]["queue"], "reports");
    let listed = ternctl(dir.path(), &env, &["schedules", "list"]).await.ok();
    assert_eq!(
        row(&listed, &id)[1..7],
        ["0", "0", "1", "1", "*", "Europe/Paris"]
    );
    let listed = ternctl(dir.path(), &env, &["schedules", "list", "--json"])
        .await
        .json();
    assert_eq!(listed["schedules"][0]["schedule_id"], id.as_str());
    let shown = ternctl(dir.path(), &env, &["schedules", "get", &id])
        .await
        .ok();
    assert_eq!(field(&shown, "cron"), "0 0 1 1 *");
    // 1 January, midnight in Paris (CET, UTC+1).
    assert!(
        field(&shown, "next run").ends_with("-12-31T23:00:00.000Z"),
        "{shown}"
    );
    let deleted = ternctl(dir.path(), &env, &["schedules", "delete", &id])
        .await
        .ok();
    assert_eq!(deleted, format!("schedule {id} deleted\n"));
    ternctl(dir.path(), &env, &["schedules", "get", &id])
        .await
        .failed_with("error: not_found: no schedule");
    let empty = ternctl(dir.path(), &env, &["schedules", "list"]).await.ok();
    assert_eq!(empty, "no schedules\n");
    ternctl(
        dir.path(),
        &env,
        &[
            "schedules",
            "create",
            "--cron",
            "0 0 30 2 *",
            "--webhook-url",
            "http://127.0.0.1:9/x",
        ],
    )
    .await
    .failed_with("error: validation_failed: ");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_redriven_and_purged() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    // Fails until healed, then accepts.
    let (receiver, healed) = Receiver::start_failing_until_healed().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = dev_env(&system);
    let mut ids = Vec::new();
    for n in 1..=3 {
        let payload = format!(r#"{{"n":{n}}}"#);
        let accepted = ternctl(
            dir.path(),
            &env,
            &[
                "tasks",
                "submit",
                "--webhook-url",
                &receiver.url("/hook"),
                "--queue",
                "orders",
                "--payload",
                &payload,
                "--max-retries",
                "0",
                "--json",
            ],
        )
        .await
        .json();
        ids.push(accepted["task_id"].as_str().expect("task_id").to_string());
    }
    for id in &ids {
        system.wait_for_status(ACME.api_key, id, "dead").await;
    }
    let [a, b, c] = [&ids[0], &ids[1], &ids[2]];

    let listed = ternctl(dir.path(), &env, &["dlq", "ls"]).await.ok();
    for id in &ids {
        assert_eq!(row(&listed, id)[1..3], ["acme", "orders"], "{listed}");
    }
    let page = ternctl(
        dir.path(),
        &env,
        &["dlq", "ls", "--tenant", "acme", "--limit", "2", "--json"],
    )
    .await
    .json();
    assert_eq!(page["dead_letters"].as_array().expect("letters").len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let more = ternctl(dir.path(), &env, &["dlq", "ls", "--limit", "2"])
        .await
        .ok();
    assert!(
        more.ends_with(&format!("more: ternctl dlq ls --cursor {cursor}\n")),
        "{more}"
    );
    let shown = ternctl(dir.path(), &env, &["dlq", "show", a]).await.ok();
    assert!(field(&shown, "reason").contains("HTTP 500"), "{shown}");
    assert_eq!(row(&shown, "1")[4], "500", "{shown}");
    assert!(shown.ends_with("payload:\n{\n  \"n\": 1\n}\n"), "{shown}");

    // One re-driven, one purged, the rest re-driven in bulk.
    healed.store(true, Ordering::SeqCst);
    let redriven = ternctl(dir.path(), &env, &["dlq", "redrive", a]).await.ok();
    assert_eq!(redriven, format!("{a} re-driven: queued\n"));
    system.wait_for_status(ACME.api_key, a, "succeeded").await;
    ternctl(dir.path(), &env, &["dlq", "redrive", a])
        .await
        .failed_with(&format!("error: {a}: "));
    let purged = ternctl(dir.path(), &env, &["dlq", "purge", c]).await.ok();
    assert_eq!(purged, format!("{c} purged: dead\n"));
    ternctl(dir.path(), &env, &["dlq", "show", c])
        .await
        .failed_with("error: not_found: ");
    let bulk = ternctl(
        dir.path(),
        &env,
        &[
            "dlq", "redrive", "--all", "--tenant", "acme", "--queue", "orders", "--json",
        ],
    )
    .await
    .json();
    assert_eq!(
        bulk,
        serde_json::json!({"matched": 1, "redriven": 1, "failed": 0})
    );
    system.wait_for_status(ACME.api_key, b, "succeeded").await;
    let empty = ternctl(dir.path(), &env, &["dlq", "ls"]).await.ok();
    assert_eq!(empty, "no dead letters\n");
    let none = ternctl(dir.path(), &env, &["dlq", "redrive", "--all"])
        .await
        .ok();
    assert_eq!(none, "matched 0, re-driven 0, failed 0\n");
    ternctl(
        dir.path(),
        &env,
        &["dlq", "ls", "--admin-token", "not-the-token"],
    )
    .await
    .failed_with("error: unauthorized: wrong admin token\n");
    assert_eq!(
        system.task(ACME.api_key, c).await.1["status"],
        "dead",
        "a purged task stays dead"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_then_env_then_dev_env_file() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let root = tempfile::tempdir().expect("temp dir");
    let nested = root.path().join("service/src");
    std::fs::create_dir_all(&nested).expect("mkdir");
    std::fs::create_dir_all(root.path().join(".tern")).expect("mkdir");
    // As scripts/lib.sh writes it.
    let file: String = dev_env(&system)
        .iter()
        .map(|(k, v)| format!("export {k}={v}\n"))
        .collect();
    std::fs::write(
        root.path().join(".tern/dev.env"),
        format!("# Written by scripts/run.sh. Use it with: source .tern/dev.env\n{file}"),
    )
    .expect("write dev.env");

    // The file alone, found from a subdirectory.
    let listed = ternctl(&nested, &[], &["queues", "list", "--json"])
        .await
        .json();
    assert_eq!(listed["queues"], serde_json::json!([]));
    let dlq = ternctl(&nested, &[], &["dlq", "ls", "--json"]).await.json();
    assert_eq!(dlq["dead_letters"], serde_json::json!([]));

    // The environment wins over the file, a flag over the environment.
    let wrong = [("TERN_API_KEY", "wrong-key".to_string())];
    ternctl(&nested, &wrong, &["queues", "list"])
        .await
        .failed_with("error: unauthorized: unknown API key\n");
    ternctl(
        &nested,
        &wrong,
        &["queues", "list", "--api-key", ACME.api_key],
    )
    .await
    .ok();
    ternctl(&nested, &[], &["queues", "list", "--api-key", "bad-key"])
        .await
        .failed_with("error: unauthorized: unknown API key\n");

    // Nothing configured anywhere, and nothing listening.
    let bare = tempfile::tempdir().expect("temp dir");
    ternctl(bare.path(), &[], &["tasks", "get", "x"])
        .await
        .failed_with(
            "error: no API URL: pass --url or set TERN_URL (or start Tern with `make run`",
        );
    let down = format!("http://127.0.0.1:{}", free_port());
    let refused = ternctl(
        bare.path(),
        &[("TERN_API_KEY", "k".into())],
        &["queues", "list", "--url", &down],
    )
    .await;
    assert!(
        refused.stderr.contains("is Tern running (`make run`)?"),
        "{refused:?}"
    );
    refused.failed_with(&format!("error: cannot connect to {down} ("));
    system.stop().await;
}

/// How long `ternctl listen` gets to print what a test waits for.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);

/// What a child process wrote to one of its pipes so far, and whether it closed it.
#[derive(Clone, Default)]
struct Pipe {
    bytes: Arc<Mutex<Vec<u8>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Pipe {
    /// Copies everything `from` yields, until it closes.
    fn collect(from: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let pipe = Self::default();
        let into = pipe.clone();
        tokio::spawn(async move {
            let mut from = from;
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = from.read(&mut chunk).await {
                into.bytes
                    .lock()
                    .expect("pipe lock")
                    .extend_from_slice(&chunk[..n]);
            }
            into.closed.store(true, Ordering::SeqCst);
        });
        pipe
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().expect("pipe lock")).into_owned()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// `ternctl listen` as a process on a port of its own; killed if the test ends first.
struct Listen {
    child: tokio::process::Child,
    port: u16,
    stdout: Pipe,
    stderr: Pipe,
}

impl Listen {
    /// Starts `ternctl listen --port <free port> args…` and waits for its banner.
    async fn start(args: &[&str]) -> Self {
        let port = free_port();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl-e2e"))
            .args(["listen", "--port", &port.to_string()])
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start ternctl listen");
        let stdout = Pipe::collect(child.stdout.take().expect("piped stdout"));
        let stderr = Pipe::collect(child.stderr.take().expect("piped stderr"));
        let mut listen = Self {
            child,
            port,
            stdout,
            stderr,
        };
        let banner = format!("ternctl listen: http://127.0.0.1:{port} (");
        listen
            .wait_for("its banner", |out| out.starts_with(&banner))
            .await;
        listen
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn output(&self) -> String {
        self.stdout.text()
    }

    /// Polls the output until `done` holds and returns it; panics with what was
    /// printed when the deadline passes or the process has exited and said all it will.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LISTEN_DEADLINE;
        loop {
            let out = self.output();
            if done(&out) {
                return out;
            }
            let exited = self.child.try_wait().expect("poll ternctl listen");
            if (exited.is_some() && self.stdout.is_closed()) || Instant::now() > deadline {
                panic!(
                    "ternctl listen (exit: {exited:?}) printed no {what}\n--- stdout:\n{out}\n--- stderr:\n{}",
                    self.stderr.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first `n` deliveries once they are printed in full, each from its `---- #`
    /// line on.
    async fn deliveries(&mut self, n: usize) -> Vec<String> {
        let out = self
            .wait_for(&format!("{n} deliveries"), |out| {
                out.matches("\nanswered: ").count() >= n
            })
            .await;
        out.split("---- #")
            .skip(1)
            .take(n)
            .map(str::to_string)
            .collect()
    }

    /// How many deliveries it has printed so far.
    fn count(&self) -> usize {
        self.output().matches("\nanswered: ").count()
    }

    /// Stops it with SIGTERM, as Ctrl-C would: it says so and exits 0.
    async fn stop(mut self) {
        let pid = self.child.id().expect("ternctl listen still runs");
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid}");
        let exit = tokio::time::timeout(LISTEN_DEADLINE, self.child.wait())
            .await
            .expect("ternctl listen stops on SIGTERM")
            .expect("wait for ternctl listen");
        assert!(exit.success(), "{exit:?}: {}", self.stderr.text());
        self.wait_for("goodbye", |out| {
            out.ends_with("\nternctl listen: stopped\n")
        })
        .await;
    }
}

/// A task for the listener at `url`: the body of `POST /v1/tasks`.
fn task_for(url: &str, payload: Value, max_retries: u32) -> Value {
    json!({
        "queue": "orders",
        "webhook_url": url,
        "payload": payload,
        "retry": {"max_retries": max_retries, "backoff": "fixed", "initial_delay": "100ms"},
    })
}

/// The status codes of a task's attempts, in order.
fn attempt_codes(task: &Value) -> Vec<u64> {
    task["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_each_delivery_and_checks_its_signature() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let mut listen = Listen::start(&["--secret", ACME.secret]).await;
    assert!(
        listen
            .output()
            .contains("(signatures checked; answering 200)\n"),
        "{}",
        listen.output()
    );

    let id = system
        .submit_id(
            ACME.api_key,
            &task_for(
                &listen.url("/hooks/orders?src=tern"),
                json!({"order": 1001, "items": ["a", "b"]}),
                3,
            ),
        )
        .await;
    let task = system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    assert_eq!(attempt_codes(&task), [200]);
    assert_eq!(task["attempts"][0]["response"], r#"{"received":true}"#);
    let delivery = &listen.deliveries(1).await[0];
    let lines: Vec<&str> = delivery.lines().collect();
    assert!(lines[0].starts_with("1 ") && lines[0].contains(" from 127.0.0.1:"));
    assert_eq!(lines[1], "POST /hooks/orders?src=tern", "{delivery}");
    for header in [
        "content-type: application/json",
        &format!("webhook-id: {id}"),
        &format!("host: 127.0.0.1:{}", listen.port),
    ] {
        assert!(lines.contains(&header), "no {header:?} in {delivery}");
    }
    for prefix in ["webhook-timestamp: ", "webhook-signature: v1,"] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no {prefix:?} in {delivery}"
        );
    }
    // The envelope indented, in the order it was sent (`json!` sorted the payload's
    // keys), then the verdicts.
    let pretty = format!(
        "{{\n  \"task_id\": \"{id}\",\n  \"queue\": \"orders\",\n  \"payload\": {{\n    \
         \"items\": [\n      \"a\",\n      \"b\"\n    ],\n    \"order\": 1001\n  }},\n  \"attempt\": 1\n}}"
    );
    assert!(
        delivery.ends_with(&format!("\n\n{pretty}\nsignature: valid\nanswered: 200\n")),
        "{delivery}"
    );

    // Another tenant's secret: the delivery is printed and answered, its signature
    // reported invalid.
    let mut wrong = Listen::start(&["--secret", GLOBEX.secret]).await;
    let id = system
        .submit_id(
            ACME.api_key,
            &task_for(&wrong.url("/hook"), json!({"n": 1}), 0),
        )
        .await;
    system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    let delivery = &wrong.deliveries(1).await[0];
    assert!(
        delivery.ends_with(
            "\nsignature: INVALID (no signature matches any of the given secrets: wrong secret, or the body was changed)\nanswered: 200\n"
        ),
        "{delivery}"
    );

    // Without a secret nothing is checked, and it says so.
    let mut unchecked = Listen::start(&[]).await;
    assert!(
        unchecked.output().contains(
            "(signatures NOT checked (no --secret / TERN_SIGNING_SECRET); answering 200)"
        ),
        "{}",
        unchecked.output()
    );
    let id = system
        .submit_id(
            ACME.api_key,
            &task_for(&unchecked.url("/hook"), json!({"n": 2}), 0),
        )
        .await;
    system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    assert!(
        unchecked.deliveries(1).await[0].ends_with("\nsignature: not checked\nanswered: 200\n")
    );

    assert_eq!(
        (listen.count(), wrong.count(), unchecked.count()),
        (1, 1, 1)
    );
    for listener in [listen, wrong, unchecked] {
        listener.stop().await;
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_answers_the_status_or_failure_rate_it_is_given() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;

    // --status 500: Tern records the 500 and retries until the budget is spent.
    let mut failing = Listen::start(&["--status", "500"]).await;
    assert!(failing.output().contains("; answering 500)\n"));
    let id = system
        .submit_id(
            ACME.api_key,
            &task_for(&failing.url("/hook"), json!({"n": 1}), 1),
        )
        .await;
    let task = system.wait_for_status(ACME.api_key, &id, "dead").await;
    assert_eq!(attempt_codes(&task), [500, 500], "{task}");
    assert_eq!(
        task["attempts"][0]["response"],
        r#"{"error":"ternctl listen --status"}"#
    );
    let deliveries = failing.deliveries(2).await;
    for (n, delivery) in deliveries.iter().enumerate() {
        assert!(
            delivery.contains(&format!("\n  \"attempt\": {}\n}}\n", n + 1)),
            "{delivery}"
        );
        assert!(delivery.ends_with("\nanswered: 500\n"), "{delivery}");
        assert!(
            delivery.contains(&format!("\nwebhook-id: {id}\n")),
            "{delivery}"
        );
    }

    // --fail-rate 1.0: every delivery fails, whatever --status says.
    let mut always = Listen::start(&["--fail-rate", "1.0"]).await;
    assert!(
        always
            .output()
            .contains("; answering 200, 500 with probability 1)\n"),
        "{}",
        always.output()
    );
    let id = system
        .submit_id(
            ACME.api_key,
            &task_for(&always.url("/hook"), json!({"n": 2}), 2),
        )
        .await;
    let task = system.wait_for_status(ACME.api_key, &id, "dead").await;
    assert_eq!(attempt_codes(&task), [500, 500, 500], "{task}");
    assert_eq!(
        task["attempts"][2]["response"],
        r#"{"error":"injected failure (ternctl listen --fail-rate)"}"#
    );
    for delivery in always.deliveries(3).await {
        assert!(
            delivery.ends_with("\nanswered: 500 (--fail-rate)\n"),
            "{delivery}"
        );
    }

    // --fail-rate 0: none does.
    let mut never = Listen::start(&["--fail-rate", "0"]).await;
    assert!(never.output().contains("; answering 200)\n"));
    let mut ids = Vec::new();
    for n in 0..5 {
        let body = task_for(&never.url("/hook"), json!({ "n": n }), 3);
        ids.push(system.submit_id(ACME.api_key, &body).await);
    }
    for id in &ids {
        let task = system.wait_for_status(ACME.api_key, id, "succeeded").await;
        assert_eq!(attempt_codes(&task), [200], "{task}");
    }
    for delivery in never.deliveries(5).await {
        assert!(delivery.ends_with("\nanswered: 200\n"), "{delivery}");
    }

    assert_eq!((failing.count(), always.count(), never.count()), (2, 3, 5));
    system.stop().await;
}

/// `ternctl verify` reading `capture` on stdin, with `args` after `verify`.
async fn verify(dir: &Path, env: &[(&str, String)], args: &[&str], capture: &[u8]) -> Run {
    let mut argv = vec!["verify"];
    argv.extend_from_slice(args);
    ternctl_with_stdin(dir, env, &argv, Some(capture)).await
}

/// `capture` with its head's `name` header set to `value`.
fn with_header(capture: &[u8], name: &str, value: &str) -> Vec<u8> {
    let text = String::from_utf8(capture.to_vec()).expect("a text capture");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let prefix = format!("{name}: ");
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| {
            if line.starts_with(&prefix) {
                format!("{prefix}{value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n")).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_a_capture_on_stdin_and_explains_failures() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let saves = dir.path().join("captures");
    let saves_arg = saves.to_str().expect("a UTF-8 temp path");
    let mut listen = Listen::start(&["--secret", ACME.secret, "--save-dir", saves_arg]).await;
    let id = system
        .submit_id(
            ACME.api_key,
            &task_for(&listen.url("/hook"), json!({"order": 1001}), 0),
        )
        .await;
    system.wait_for_status(ACME.api_key, &id, "succeeded").await;
    let out = listen
        .wait_for("saved capture", |out| out.contains("\nsaved: "))
        .await;
    let saved: PathBuf = out
        .lines()
        .find_map(|line| line.strip_prefix("saved: "))
        .expect("saved line")
        .into();
    assert!(saved.starts_with(&saves), "{saved:?}");
    let capture = std::fs::read(&saved).expect("read the capture");
    let body_len = {
        let text = String::from_utf8_lossy(&capture);
        let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
        body.len()
    };

    // As captured: valid.
    let run = verify(dir.path(), &[], &["--secret", ACME.secret], &capture).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "valid\n"), "{run:?}");
    assert_eq!(
        run.stderr,
        format!("note: checked POST /hook HTTP/1.1, {body_len} body byte(s)\n")
    );
    // The secret from the environment, as `source .tern/dev.env` gives none.
    let run = verify(
        dir.path(),
        &[("TERN_SIGNING_SECRET", ACME.secret.to_string())],
        &[],
        &capture,
    )
    .await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "valid\n"), "{run:?}");

    let no_match = "invalid: no signature matches any of the given secrets: wrong secret, or the body was changed\n";
    // One byte of the body changed.
    let text = String::from_utf8(capture.clone()).expect("a text capture");
    assert_eq!(text.matches("1001").count(), 1, "{text}");
    let tampered = text.replace("1001", "1002").into_bytes();
    let run = verify(dir.path(), &[], &["--secret", ACME.secret], &tampered).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.starts_with(no_match), "{run:?}");
    // Another secret.
    let run = verify(dir.path(), &[], &["--secret", GLOBEX.secret], &capture).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.starts_with(no_match), "{run:?}");
    // Either of two secrets, as during a rotation.
    let either = format!("{},{}", GLOBEX.secret, ACME.secret);
    let run = verify(dir.path(), &[], &["--secret", &either], &capture).await;
    assert_eq!(run.code, 0, "{run:?}");

    // Signed correctly, but a day ago: the age is named, and a wider tolerance takes it.
    let body = &capture[capture.len() - body_len..];
    let day_ago = time::OffsetDateTime::now_utc().unix_timestamp() - 86_400;
    let signature = tern_core::signing::SigningSecret::parse(ACME.secret)
        .expect("test secret")
        .sign(&id, day_ago, body);
    let old = with_header(&capture, "webhook-timestamp", &day_ago.to_string());
    let old = with_header(&old, "webhook-signature", &signature);
    let run = verify(dir.path(), &[], &["--secret", ACME.secret], &old).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.starts_with("invalid: timestamp is 864")
            && run
                .stdout
                .contains(" s old, beyond the 300 s tolerance: clock skew or a replayed request\n"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("  - the request was signed 864")
            && run
                .stdout
                .contains("s ago; to check an old capture pass --tolerance 864"),
        "{run:?}"
    );
    let run = verify(
        dir.path(),
        &[],
        &["--secret", ACME.secret, "--tolerance", "90000"],
        &old,
    )
    .await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "valid\n"), "{run:?}");

    // Not a request at all, and no secret at all.
    let run = verify(dir.path(), &[], &["--secret", ACME.secret], b"").await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .starts_with("invalid: cannot read the request: the input is empty"),
        "{run:?}"
    );
    let run = verify(dir.path(), &[], &[], &capture).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("--secret"), "{run:?}");
    listen.stop().await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_put_shown_used_and_deleted() {
    let nats = NatsServer::start().await;
    let system = TernSystem::start(&nats).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = dev_env(&system);
    let down = format!("http://127.0.0.1:{}/v1/chat", free_port());
    let provider = Receiver::start_full(Duration::ZERO, |_, _| {
        use axum::response::IntoResponse;
        (
            http::StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            r#"{"answer":"from two"}"#,
        )
            .into_response()
    })
    .await;
    let second = provider.url("/v1/messages");

    // Two targets, the second with credentials: shown by name only.
    let route = json!({"targets": [
        {"url": down, "timeout": "2s"},
        {"url": second, "headers": {"Authorization": "Bearer sk_provider_two", "X-Provider": "two"}, "retries": 1},
    ]})
    .to_string();
    let put = ternctl(dir.path(), &env, &["routes", "put", "ai", "--body", &route])
        .await
        .ok();
    assert_eq!(field(&put, "route"), "ai");
    let shown = ternctl(dir.path(), &env, &["routes", "get", "ai"])
        .await
        .ok();
    assert_eq!(field(&shown, "route"), "ai");
    assert_eq!(row(&shown, "1")[..3], ["1", down.as_str(), "2s"], "{shown}");
    assert_eq!(
        row(&shown, "2")[..4],
        ["2", second.as_str(), "authorization,", "x-provider"],
        "{shown}"
    );
    assert_eq!(*row(&shown, "2").last().expect("retries"), "1", "{shown}");
    assert!(!shown.contains("sk_provider_two"), "{shown}");
    let json = ternctl(dir.path(), &env, &["routes", "get", "ai", "--json"])
        .await
        .json();
    assert_eq!(json["targets"].as_array().expect("targets").len(), 2);
    assert_eq!(
        json["targets"][1]["header_names"],
        json!(["authorization", "x-provider"])
    );
    assert!(!json.to_string().contains("sk_provider_two"), "{json}");

    // The flags: one timeout and retry count for every target.
    let flags = ternctl(
        dir.path(),
        &env,
        &[
            "routes",
            "put",
            "plain",
            "--target",
            &down,
            "--target",
            &second,
            "--timeout",
            "5s",
            "--retries",
            "2",
            "--json",
        ],
    )
    .await
    .json();
    let targets = flags["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2);
    for target in targets {
        assert_eq!(
            (&target["timeout"], &target["retries"]),
            (&json!("5s"), &json!(2))
        );
    }

    // A synchronous proxied call through the route: the first target is down, the
    // second answers with its credentials.
    let response = system
        .client()
        .post(format!("{}/v1/proxy", system.api_url))
        .bearer_auth(ACME.api_key)
        .header("X-Route-Key", "ai")
        .header("Content-Type", "application/json")
        .body(r#"{"prompt":"hi"}"#)
        .send()
        .await
        .expect("proxied call");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("upstream body"),
        r#"{"answer":"from two"}"#
    );
    let calls = provider.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/v1/messages");
    assert_eq!(
        calls[0].header("authorization"),
        Some("Bearer sk_provider_two")
    );
    assert_eq!(&calls[0].body[..], br#"{"prompt":"hi"}"#);

    // Deleted: gone, and saying so is an error.
    let deleted = ternctl(dir.path(), &env, &["routes", "delete", "ai"])
        .await
        .ok();
    assert_eq!(deleted, "route ai deleted\n");
    for args in [["routes", "get", "ai"], ["routes", "delete", "ai"]] {
        let run = ternctl(dir.path(), &env, &args).await;
        assert_eq!(run.code, 1, "{run:?}");
        run.failed_with("error: not_found: no route \"ai\"\n");
    }
    let plain = ternctl(dir.path(), &env, &["routes", "get", "plain"])
        .await
        .ok();
    assert_eq!(field(&plain, "route"), "plain");
    system.stop().await;
}
