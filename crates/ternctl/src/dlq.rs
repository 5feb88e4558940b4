//! `ternctl dlq`: the dead-letter queue, through the admin API (`/admin/v1/dlq`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Answer, Client, ClientError, block_on, segment};
use crate::connection::{Api, ConnectionArgs};
use crate::output::{print, print_json, print_raw_json};
use crate::table::{Table, key_values, text};
use crate::tasks::attempts_text;

/// A bulk re-drive is one request the server paces (`ingress.redrive_rate` per
/// second, up to 10,000 tasks), so it may take minutes.
const BULK_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Args)]
pub struct DlqArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, newest first (GET /admin/v1/dlq).
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show a dead letter: reason, attempts, payload (GET /admin/v1/dlq/{task_id}).
    Show {
        /// Task id.
        task_id: String,
    },
    /// Re-drive dead letters: the given tasks one by one, or with --all every match
    /// of the filters in one server-paced request.
    Redrive(RedriveArgs),
    /// Remove dead letters (the tasks stay dead) (DELETE /admin/v1/dlq/{task_id}).
    Purge {
        /// Task ids.
        #[arg(required = true)]
        task_ids: Vec<String>,
    },
}

#[derive(Args)]
struct Filters {
    /// Only this tenant's dead letters.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this queue's dead letters.
    #[arg(long)]
    queue: Option<String>,
    /// Only those that died at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only those that died before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    filters: Filters,
    /// At most this many (1-1000, default 50).
    #[arg(long)]
    limit: Option<u32>,
    /// Continue after a previous page (its next_cursor).
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Args)]
struct RedriveArgs {
    /// Task ids to re-drive one by one.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    task_ids: Vec<String>,
    /// Re-drive every dead letter matching the filters (POST /admin/v1/dlq/redrive).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filters: Filters,
    /// With --all: at most this many (1-10000, default 1000).
    #[arg(long)]
    limit: Option<u32>,
}

impl ListArgs {
    fn path(&self) -> String {
        let f = &self.filters;
        let limit = self.limit.map(|l| l.to_string());
        let params: Vec<String> = [
            ("tenant", &f.tenant),
            ("queue", &f.queue),
            ("since", &f.since),
            ("until", &f.until),
            ("limit", &limit),
            ("cursor", &self.cursor),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", segment(value.as_ref()?))))
        .collect();
        if params.is_empty() {
            "/admin/v1/dlq".into()
        } else {
            format!("/admin/v1/dlq?{}", params.join("&"))
        }
    }
}

impl RedriveArgs {
    /// Filters select what `--all` re-drives; with task ids they would be ignored.
    fn check_filters(&self) -> anyhow::Result<()> {
        let f = &self.filters;
        let filtered = f.tenant.is_some()
            || f.queue.is_some()
            || f.since.is_some()
            || f.until.is_some()
            || self.limit.is_some();
        if filtered && !self.all {
            anyhow::bail!("--tenant, --queue, --since, --until and --limit need --all");
        }
        Ok(())
    }

    fn bulk_body(&self) -> Value {
        let f = &self.filters;
        let mut body = Map::new();
        for (name, value) in [
            ("tenant_id", &f.tenant),
            ("queue", &f.queue),
            ("since", &f.since),
            ("until", &f.until),
        ] {
            if let Some(value) = value {
                body.insert(name.into(), json!(value));
            }
        }
        if let Some(limit) = self.limit {
            body.insert("limit".into(), json!(limit));
        }
        Value::Object(body)
    }
}

pub fn run(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client(Api::Admin)?;
    let json = args.connection.json;
    block_on(async move {
        match args.command {
            DlqCommand::Ls(list) => {
                let answer = client.call(Method::GET, &list.path(), None, &[]).await?;
                if json {
                    print_json(&answer);
                } else {
                    print(&list_text(&answer.body));
                }
            }
            DlqCommand::Show { task_id } => {
                let answer = client
                    .call(Method::GET, &letter_path(&task_id, ""), None, &[])
                    .await?;
                if json {
                    print_json(&answer);
                } else {
                    print(&letter_text(&answer.body));
                }
            }
            DlqCommand::Redrive(redrive) if redrive.all => {
                return bulk_redrive(&client, json, &redrive.bulk_body()).await;
            }
            DlqCommand::Redrive(redrive) => {
                redrive.check_filters()?;
                return each(
                    &client,
                    json,
                    &redrive.task_ids,
                    Method::POST,
                    "/redrive",
                    "re-driven",
                )
                .await;
            }
            DlqCommand::Purge { task_ids } => {
                return each(&client, json, &task_ids, Method::DELETE, "", "purged").await;
            }
        }
        Ok(ExitCode::SUCCESS)
    })?
}

fn letter_path(task_id: &str, suffix: &str) -> String {
    format!("/admin/v1/dlq/{}{suffix}", segment(task_id))
}

/// Bulk re-drive answers only when it is done, so a spinner shows it is working.
async fn bulk_redrive(client: &Client, json: bool, body: &Value) -> anyhow::Result<ExitCode> {
    let spinner = ProgressBar::new_spinner().with_message(
        "re-driving dead letters (the server paces them at ingress.redrive_rate per second)",
    );
    spinner.enable_steady_tick(Duration::from_millis(100));
    let answer = client
        .call_within(
            Method::POST,
            "/admin/v1/dlq/redrive",
            Some(body),
            &[],
            BULK_TIMEOUT,
        )
        .await;
    spinner.finish_and_clear();
    let answer = answer?;
    if json {
        print_json(&answer);
    } else {
        print(&format!(
            "matched {}, re-driven {}, failed {}\n",
            text(&answer.body["matched"]),
            text(&answer.body["redriven"]),
            text(&answer.body["failed"]),
        ));
    }
    Ok(if answer.body["failed"].as_u64() == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One call per task, with a progress bar when there are several; a task the API
/// refuses is reported and the rest go on.
async fn each(
    client: &Client,
    json: bool,
    task_ids: &[String],
    method: Method,
    suffix: &str,
    done: &str,
) -> anyhow::Result<ExitCode> {
    let bar = if task_ids.len() > 1 {
        ProgressBar::new(task_ids.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut answers: Vec<Result<Answer, (String, ClientError)>> = Vec::new();
    for task_id in task_ids {
        bar.set_message(task_id.clone());
        match client
            .call(method.clone(), &letter_path(task_id, suffix), None, &[])
            .await
        {
            Ok(answer) => answers.push(Ok(answer)),
            Err(err @ ClientError::Api { .. }) => answers.push(Err((task_id.clone(), err))),
            Err(other) => {
                bar.abandon();
                return Err(other.into());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let failed = answers.iter().filter(|a| a.is_err()).count();
    if json {
        let documents: Vec<String> = answers
            .iter()
            .map(|a| match a {
                Ok(answer) => answer.raw.trim().to_string(),
                Err((_, ClientError::Api { code, message, .. })) => {
                    json!({"error": {"code": code, "message": message}}).to_string()
                }
                Err((_, other)) => json!({"error": {"message": other.to_string()}}).to_string(),
            })
            .collect();
        match documents.as_slice() {
            [one] => print_raw_json(one),
            many => print_raw_json(&format!("[{}]", many.join(","))),
        }
    } else {
        for answer in &answers {
            match answer {
                Ok(answer) => print(&format!(
                    "{} {done}: {}\n",
                    text(&answer.body["task_id"]),
                    text(&answer.body["status"])
                )),
                Err((task_id, err)) => eprintln!("error: {task_id}: {err}"),
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn list_text(list: &Value) -> String {
    let mut table = Table::new(["task", "tenant", "queue", "dead at", "reason"]);
    for letter in list["dead_letters"].as_array().into_iter().flatten() {
        table.row([
            text(&letter["task_id"]),
            text(&letter["tenant_id"]),
            text(&letter["queue"]),
            text(&letter["dead_at"]),
            text(&letter["reason"]),
        ]);
    }
    let mut out = table.render_or("no dead letters");
    if let Some(cursor) = list["next_cursor"].as_str() {
        out.push_str(&format!("more: ternctl dlq ls --cursor {cursor}\n"));
    }
    out
}

fn letter_text(letter: &Value) -> String {
    let task = &letter["task"];
    let mut out = key_values(&[
        ("task", text(&letter["task_id"])),
        ("tenant", text(&letter["tenant_id"])),
        ("queue", text(&letter["queue"])),
        ("dead at", text(&letter["dead_at"])),
        ("reason", text(&letter["reason"])),
        ("status", text(&task["status"])),
        ("webhook url", text(&task["webhook_url"])),
        ("last error", text(&task["last_error"])),
    ]);
    out.push_str(&attempts_text(&task["attempts"]));
    if !letter["payload"].is_null() {
        let pretty = serde_json::to_string_pretty(&letter["payload"]).unwrap_or_default();
        out.push_str(&format!("\npayload:\n{pretty}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: DlqCommand,
    }

    fn parse(args: &[&str]) -> Result<DlqCommand, clap::Error> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| c.command)
    }

    #[test]
    fn list_filters_become_an_escaped_query() {
        let Ok(DlqCommand::Ls(list)) = parse(&["ls"]) else {
            panic!("ls")
        };
        assert_eq!(list.path(), "/admin/v1/dlq");
        let Ok(DlqCommand::Ls(list)) = parse(&[
            "ls",
            "--tenant",
            "acme",
            "--since",
            "2026-01-01T00:00:00+01:00",
            "--limit",
            "5",
        ]) else {
            panic!("ls")
        };
        assert_eq!(
            list.path(),
            "/admin/v1/dlq?tenant=acme&since=2026-01-01T00%3A00%3A00%2B01%3A00&limit=5"
        );
    }

    #[test]
    fn redrive_takes_ids_or_all_with_filters() {
        assert!(parse(&["redrive"]).is_err());
        assert!(parse(&["redrive", "id", "--all"]).is_err());
        let Ok(DlqCommand::Redrive(ids)) = parse(&["redrive", "a", "b", "--limit", "3"]) else {
            panic!("redrive")
        };
        assert_eq!(ids.task_ids, ["a", "b"]);
        assert_eq!(
            ids.check_filters().unwrap_err().to_string(),
            "--tenant, --queue, --since, --until and --limit need --all"
        );
        let Ok(DlqCommand::Redrive(all)) =
            parse(&["redrive", "--all", "--tenant", "acme", "--limit", "3"])
        else {
            panic!("redrive")
        };
        assert!(all.check_filters().is_ok());
        assert_eq!(all.bulk_body(), json!({"tenant_id": "acme", "limit": 3}));
    }

    #[test]
    fn list_and_letter_render() {
        let list = json!({"dead_letters": [
            {"task_id": "t1", "tenant_id": "acme", "queue": "q", "dead_at": "d", "reason": "retries exhausted"}
        ], "next_cursor": "42"});
        assert_eq!(
            list_text(&list),
            "TASK  TENANT  QUEUE  DEAD AT  REASON\n\
             t1    acme    q      d        retries exhausted\n\
             more: ternctl dlq ls --cursor 42\n"
        );
        assert_eq!(
            list_text(&json!({"dead_letters": [], "next_cursor": null})),
            "no dead letters\n"
        );
        let letter = json!({"task_id": "t1", "tenant_id": "acme", "queue": "q", "dead_at": "d",
            "reason": "r", "task": {"status": "dead", "attempts": []}, "payload": {"n": 1}});
        assert_eq!(
            letter_text(&letter),
            "task:     t1\ntenant:   acme\nqueue:    q\ndead at:  d\nreason:   r\nstatus:   dead\n\
             \npayload:\n{\n  \"n\": 1\n}\n"
        );
    }
}
