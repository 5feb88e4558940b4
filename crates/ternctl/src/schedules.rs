//! `ternctl schedules`: recurring schedules (`/v1/schedules`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{block_on, segment};
use crate::connection::{Api, ConnectionArgs};
use crate::output::{print, print_json};
use crate::table::{Table, key_values, text};
use crate::tasks::TaskFlags;

#[derive(Args)]
pub struct SchedulesArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: SchedulesCommand,
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// Create a schedule that submits a task at every cron slot (POST /v1/schedules).
    Create(Box<CreateArgs>),
    /// Show a schedule (GET /v1/schedules/{id}).
    Get {
        /// Schedule id.
        id: String,
    },
    /// List the tenant's schedules, oldest first (GET /v1/schedules).
    #[command(alias = "ls")]
    List,
    /// Delete a schedule; it fires no more (DELETE /v1/schedules/{id}).
    Delete {
        /// Schedule id.
        id: String,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// Cron expression: 5 fields, or 6 with leading seconds (e.g. "*/5 * * * *").
    #[arg(long)]
    cron: String,
    /// IANA time zone the expression is read in (default UTC).
    #[arg(long, value_name = "ZONE")]
    timezone: Option<String>,
    /// The task each slot creates; --body gives its whole JSON.
    #[command(flatten)]
    task: TaskFlags,
}

impl CreateArgs {
    fn to_body(&self) -> anyhow::Result<Value> {
        let mut body = Map::new();
        body.insert("cron".into(), json!(self.cron));
        if let Some(zone) = &self.timezone {
            body.insert("timezone".into(), json!(zone));
        }
        body.insert("task".into(), self.task.to_body()?);
        Ok(Value::Object(body))
    }
}

pub fn run(args: SchedulesArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client(Api::Public)?;
    let json = args.connection.json;
    block_on(async move {
        let answer = match &args.command {
            SchedulesCommand::Create(create) => {
                let body = create.to_body()?;
                client
                    .call(Method::POST, "/v1/schedules", Some(&body), &[])
                    .await?
            }
            SchedulesCommand::Get { id } => {
                client
                    .call(Method::GET, &schedule_path(id), None, &[])
                    .await?
            }
            SchedulesCommand::List => client.call(Method::GET, "/v1/schedules", None, &[]).await?,
            SchedulesCommand::Delete { id } => {
                client
                    .call(Method::DELETE, &schedule_path(id), None, &[])
                    .await?
            }
        };
        if json {
            print_json(&answer);
        } else {
            print(&match &args.command {
                SchedulesCommand::List => list_text(&answer.body),
                SchedulesCommand::Delete { .. } => {
                    format!("schedule {} deleted\n", text(&answer.body["schedule_id"]))
                }
                _ => schedule_text(&answer.body),
            });
        }
        Ok(ExitCode::SUCCESS)
    })?
}

fn schedule_path(id: &str) -> String {
    format!("/v1/schedules/{}", segment(id))
}

fn schedule_text(schedule: &Value) -> String {
    key_values(&[
        ("schedule", text(&schedule["schedule_id"])),
        ("cron", text(&schedule["cron"])),
        ("timezone", text(&schedule["timezone"])),
        ("created", text(&schedule["created_at"])),
        ("next run", text(&schedule["next_run_at"])),
        ("last run", text(&schedule["last_run_at"])),
        ("last task", text(&schedule["last_task_id"])),
        ("last error", text(&schedule["last_error"])),
        ("queue", text(&schedule["task"]["queue"])),
        ("webhook url", text(&schedule["task"]["webhook_url"])),
    ])
}

fn list_text(list: &Value) -> String {
    let mut table = Table::new([
        "schedule", "cron", "timezone", "queue", "next run", "last run",
    ]);
    for schedule in list["schedules"].as_array().into_iter().flatten() {
        table.row([
            text(&schedule["schedule_id"]),
            text(&schedule["cron"]),
            text(&schedule["timezone"]),
            text(&schedule["task"]["queue"]),
            text(&schedule["next_run_at"]),
            text(&schedule["last_run_at"]),
        ]);
    }
    table.render_or("no schedules")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        create: CreateArgs,
    }

    #[test]
    fn create_wraps_the_task_body() {
        let cli = Cli::try_parse_from([
            "t",
            "--cron",
            "0 * * * *",
            "--timezone",
            "Europe/Paris",
            "--webhook-url",
            "http://r",
            "--payload",
            "hi",
        ])
        .unwrap();
        assert_eq!(
            cli.create.to_body().unwrap(),
            json!({"cron": "0 * * * *", "timezone": "Europe/Paris",
                   "task": {"queue": "default", "webhook_url": "http://r", "payload": "hi"}})
        );
        assert!(Cli::try_parse_from(["t", "--webhook-url", "http://r"]).is_err());
    }

    #[test]
    fn list_renders_one_row_per_schedule() {
        let list = json!({"schedules": [
            {"schedule_id": "s1", "cron": "*/5 * * * *", "timezone": "UTC",
             "task": {"queue": "reports"}, "next_run_at": "n"}
        ]});
        assert_eq!(
            list_text(&list),
            "SCHEDULE  CRON         TIMEZONE  QUEUE    NEXT RUN  LAST RUN\n\
             s1        */5 * * * *  UTC       reports  n\n"
        );
        assert_eq!(list_text(&json!({"schedules": []})), "no schedules\n");
    }
}
