//! `ternctl` against a running Tern: the built program (`ternctl-e2e`, the same
//! entry point as the `ternctl` binary) run as a process, its output and exit code
//! checked.

use std::path::Path;
use std::sync::atomic::Ordering;

use serde_json::Value;
use tern_tests::system::{ACME, ADMIN_TOKEN};
use tern_tests::{NatsServer, Receiver, TernSystem, free_port};

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
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl-e2e"))
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run ternctl");
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
