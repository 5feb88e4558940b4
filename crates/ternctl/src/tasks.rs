//! `ternctl tasks`: submit, inspect and cancel tasks (`/v1/tasks`).

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Answer, Client, ClientError, block_on, segment};
use crate::connection::{Api, ConnectionArgs};
use crate::json_arg;
use crate::output::{print, print_json, print_raw_json};
use crate::policy_flags::RetryFlags;
use crate::table::{Table, key_values, text};

#[derive(Args)]
pub struct TasksArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Submit a webhook task (POST /v1/tasks).
    Submit(Box<SubmitArgs>),
    /// Show a task: status, attempts, result (GET /v1/tasks/{id}).
    Get {
        /// Task id.
        id: String,
    },
    /// Cancel a task that has not started (DELETE /v1/tasks/{id}).
    Cancel {
        /// Task id.
        id: String,
    },
    /// Show the status of the given tasks as a table.
    ///
    /// The API has no endpoint that lists a tenant's tasks, so this looks up the task
    /// ids it is given (as arguments, or one per line on standard input) with
    /// GET /v1/tasks/{id}. With --json it prints a JSON array of the answers (an
    /// unknown id's entry is the API's error object).
    List {
        /// Task ids; read from standard input when none is given.
        ids: Vec<String>,
    },
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    task: TaskFlags,
    /// Idempotency-Key header: the same key and body return the first task.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

/// The flags `--body` replaces (by clap id).
const FIELD_FLAGS: [&str; 13] = [
    "webhook_url",
    "queue",
    "payload",
    "delay",
    "not_before",
    "notify_url",
    "await_callback",
    "max_retries",
    "backoff",
    "initial_delay",
    "max_delay",
    "timeout",
    "max_age",
];

/// The fields of a task body (also the `task` of a schedule).
#[derive(Args, Debug, Clone)]
pub struct TaskFlags {
    /// Where Tern POSTs the payload.
    #[arg(long, value_name = "URL", required_unless_present = "body")]
    webhook_url: Option<String>,
    /// Queue name.
    #[arg(long, default_value = "default")]
    queue: String,
    /// Payload: JSON, @file, or - for standard input (a bare word is sent as a string).
    #[arg(long, value_name = "JSON", default_value = "{}")]
    payload: String,
    /// Dispatch no sooner than this long from now (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    delay: Option<String>,
    /// Dispatch no sooner than this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    not_before: Option<String>,
    /// Where Tern POSTs a signed event when the task ends.
    #[arg(long, value_name = "URL")]
    notify_url: Option<String>,
    /// Make it an await-callback task with this callback timeout (e.g. 1h).
    #[arg(long, value_name = "DURATION")]
    await_callback: Option<String>,
    #[command(flatten)]
    retry: RetryFlags,
    /// The whole request body instead of the flags above: JSON, @file, or -.
    #[arg(long, value_name = "JSON", conflicts_with_all = FIELD_FLAGS)]
    body: Option<String>,
}

impl TaskFlags {
    /// The task body the flags describe.
    pub fn to_body(&self) -> anyhow::Result<Value> {
        if let Some(body) = &self.body {
            return json_arg::read(body, "--body");
        }
        let mut body = Map::new();
        body.insert("queue".into(), json!(self.queue));
        body.insert("webhook_url".into(), json!(self.webhook_url));
        body.insert(
            "payload".into(),
            json_arg::read_lenient(&self.payload, "--payload")?,
        );
        for (name, value) in [
            ("delay", &self.delay),
            ("not_before", &self.not_before),
            ("notify_url", &self.notify_url),
        ] {
            if let Some(value) = value {
                body.insert(name.into(), json!(value));
            }
        }
        if let Some(timeout) = &self.await_callback {
            body.insert("await_callback".into(), json!({ "timeout": timeout }));
        }
        let retry = self.retry.to_map();
        if !retry.is_empty() {
            body.insert("retry".into(), Value::Object(retry));
        }
        Ok(Value::Object(body))
    }
}

pub fn run(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client(Api::Public)?;
    let json = args.connection.json;
    block_on(async move {
        match args.command {
            TasksCommand::Submit(submit) => {
                let body = submit.task.to_body()?;
                let headers: Vec<_> = submit
                    .idempotency_key
                    .into_iter()
                    .map(|k| ("Idempotency-Key", k))
                    .collect();
                let answer = client
                    .call(Method::POST, "/v1/tasks", Some(&body), &headers)
                    .await?;
                if json {
                    print_json(&answer);
                } else {
                    let replayed = answer.headers.contains_key("idempotent-replayed");
                    print(&key_values(&[
                        ("task", text(&answer.body["task_id"])),
                        ("status", text(&answer.body["status"])),
                        ("status url", text(&answer.body["status_url"])),
                        ("callback url", text(&answer.body["callback_url"])),
                        (
                            "replayed",
                            if replayed {
                                "yes (Idempotency-Key seen before: this is the first task)".into()
                            } else {
                                String::new()
                            },
                        ),
                    ]));
                }
            }
            TasksCommand::Get { id } => {
                let answer = client.call(Method::GET, &task_path(&id), None, &[]).await?;
                show(json, &answer);
            }
            TasksCommand::Cancel { id } => {
                let answer = client
                    .call(Method::DELETE, &task_path(&id), None, &[])
                    .await?;
                show(json, &answer);
            }
            TasksCommand::List { ids } => return list(&client, json, ids).await,
        }
        Ok(ExitCode::SUCCESS)
    })?
}

fn show(json: bool, answer: &Answer) {
    if json {
        print_json(answer);
    } else {
        print(&task_text(&answer.body));
    }
}

/// `/v1/tasks/{id}`, with the id escaped so that no input changes the route.
fn task_path(id: &str) -> String {
    format!("/v1/tasks/{}", segment(id))
}

/// A task as `tasks get` shows it: its fields, then its attempts.
pub fn task_text(task: &Value) -> String {
    let schedule = match (text(&task["schedule_id"]), text(&task["schedule_slot"])) {
        (id, slot) if !slot.is_empty() => format!("{id} (slot {slot})"),
        (id, _) => id,
    };
    let result = match &task["result"] {
        Value::Object(r) => format!(
            "{} in {} ms",
            text(r.get("statusCode").unwrap_or(&Value::Null)),
            text(r.get("duration").unwrap_or(&Value::Null))
        ),
        _ => String::new(),
    };
    let mut out = key_values(&[
        ("task", text(&task["task_id"])),
        ("status", text(&task["status"])),
        ("queue", text(&task["queue"])),
        ("webhook url", text(&task["webhook_url"])),
        ("created", text(&task["created_at"])),
        ("updated", text(&task["updated_at"])),
        ("scheduled for", text(&task["scheduled_for"])),
        ("schedule", schedule),
        ("next attempt", text(&task["next_attempt_at"])),
        ("result", result),
        ("last error", text(&task["last_error"])),
    ]);
    out.push_str(&attempts_text(&task["attempts"]));
    out
}

/// The attempts table (nothing when there were none).
pub fn attempts_text(attempts: &Value) -> String {
    let mut table = Table::new(["attempt", "started", "duration", "outcome", "response"]);
    for attempt in attempts.as_array().into_iter().flatten() {
        let outcome = match &attempt["status_code"] {
            Value::Null => text(&attempt["error"]),
            code => text(code),
        };
        let response: String = text(&attempt["response"]).chars().take(60).collect();
        table.row([
            text(&attempt["number"]),
            text(&attempt["started_at"]),
            format!("{} ms", text(&attempt["duration_ms"])),
            outcome,
            response,
        ]);
    }
    if table.is_empty() {
        String::new()
    } else {
        format!("\n{}", table.render())
    }
}

async fn list(client: &Client, json: bool, mut ids: Vec<String>) -> anyhow::Result<ExitCode> {
    if ids.is_empty() {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            anyhow::bail!(
                "give task ids as arguments or one per line on standard input \
                 (the API cannot list a tenant's tasks)"
            );
        }
        for line in stdin.lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                ids.push(line.trim().to_string());
            }
        }
    }
    let mut table = Table::new(["task", "status", "queue", "attempts", "updated", "error"]);
    let mut documents = Vec::new();
    let mut failed = false;
    for id in &ids {
        match client.call(Method::GET, &task_path(id), None, &[]).await {
            Ok(answer) => {
                let task = &answer.body;
                table.row([
                    text(&task["task_id"]),
                    text(&task["status"]),
                    text(&task["queue"]),
                    task["attempts"].as_array().map_or(0, Vec::len).to_string(),
                    text(&task["updated_at"]),
                    text(&task["last_error"]),
                ]);
                documents.push(answer.raw.trim().to_string());
            }
            Err(ClientError::Api { code, message, .. }) => {
                failed = true;
                table.row([
                    id.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("{code}: {message}"),
                ]);
                documents.push(json!({"error": {"code": code, "message": message}}).to_string());
            }
            Err(other) => return Err(other.into()),
        }
    }
    if json {
        print_raw_json(&format!("[{}]", documents.join(",")));
    } else {
        print(&table.render());
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        task: TaskFlags,
    }

    fn body(args: &[&str]) -> Value {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().task.to_body().unwrap()
    }

    #[test]
    fn flags_make_a_task_body() {
        assert_eq!(
            body(&["--webhook-url", "http://r/x"]),
            json!({"queue": "default", "webhook_url": "http://r/x", "payload": {}})
        );
        assert_eq!(
            body(&[
                "--webhook-url",
                "http://r/x",
                "--queue",
                "q",
                "--payload",
                r#"{"n":1}"#,
                "--delay",
                "10m",
                "--notify-url",
                "http://n",
                "--await-callback",
                "1h",
                "--max-retries",
                "2",
                "--backoff",
                "fixed",
            ]),
            json!({
                "queue": "q", "webhook_url": "http://r/x", "payload": {"n": 1}, "delay": "10m",
                "notify_url": "http://n", "await_callback": {"timeout": "1h"},
                "retry": {"max_retries": 2, "backoff": "fixed"}
            })
        );
        assert_eq!(
            body(&["--body", r#"{"anything":true}"#]),
            json!({"anything": true})
        );
    }

    #[test]
    fn body_excludes_the_field_flags_and_one_of_them_is_needed() {
        assert!(Cli::try_parse_from(["t"]).is_err());
        for flag in FIELD_FLAGS {
            let flag = format!("--{}", flag.replace('_', "-"));
            assert!(
                Cli::try_parse_from(["t", "--body", "{}", &flag, "x"]).is_err(),
                "{flag}"
            );
        }
    }

    #[test]
    fn a_task_renders_fields_then_attempts() {
        let task = json!({
            "task_id": "t1", "status": "succeeded", "queue": "default",
            "webhook_url": "http://r", "created_at": "c", "updated_at": "u",
            "attempts": [
                {"number": 1, "started_at": "s1", "duration_ms": 30000, "error": "timeout", "response": "timed out"},
                {"number": 2, "started_at": "s2", "duration_ms": 3, "status_code": 200}
            ],
            "result": {"statusCode": 200, "headers": {}, "body": "", "duration": 3}
        });
        assert_eq!(
            task_text(&task),
            "task:         t1\n\
             status:       succeeded\n\
             queue:        default\n\
             webhook url:  http://r\n\
             created:      c\n\
             updated:      u\n\
             result:       200 in 3 ms\n\
             \n\
             ATTEMPT  STARTED  DURATION  OUTCOME  RESPONSE\n\
             1        s1       30000 ms  timeout  timed out\n\
             2        s2       3 ms      200\n"
        );
    }
}
