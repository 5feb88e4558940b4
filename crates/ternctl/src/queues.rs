//! `ternctl queues`: queue policies (`/v1/queues`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{block_on, segment};
use crate::connection::{Api, ConnectionArgs};
use crate::json_arg;
use crate::output::{print, print_json};
use crate::policy_flags::RetryFlags;
use crate::table::{Table, key_values, text};

#[derive(Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: QueuesCommand,
}

#[derive(Subcommand)]
enum QueuesCommand {
    /// Show a queue's effective policy (GET /v1/queues/{name}).
    Get {
        /// Queue name.
        name: String,
    },
    /// Replace a queue's policy (PUT /v1/queues/{name}); fields not given take the
    /// defaults (and no limits).
    Set(SetArgs),
    /// List the queues that have a policy (GET /v1/queues).
    List,
}

#[derive(Args)]
struct SetArgs {
    /// Queue name.
    name: String,
    #[command(flatten)]
    retry: RetryFlags,
    /// Dispatches per second (fractions allowed, e.g. 0.5).
    #[arg(long, value_name = "PER_SECOND")]
    rate_limit: Option<f64>,
    /// Bucket size of the rate limit (default: one second's worth).
    #[arg(long, value_name = "N", requires = "rate_limit")]
    burst: Option<u32>,
    /// Deliveries in flight at once.
    #[arg(long, value_name = "N")]
    max_concurrent: Option<u32>,
    /// The whole policy instead of the flags above: JSON, @file, or -.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["rate_limit", "max_concurrent"])]
    body: Option<String>,
}

impl SetArgs {
    fn to_body(&self) -> anyhow::Result<Value> {
        if let Some(body) = &self.body {
            return json_arg::read(body, "--body");
        }
        let mut body = self.retry.to_map();
        if let Some(per_second) = self.rate_limit {
            let rate = match self.burst {
                Some(burst) => json!({"per_second": per_second, "burst": burst}),
                None => json!(per_second),
            };
            body.insert("rate_limit".into(), rate);
        }
        if let Some(n) = self.max_concurrent {
            body.insert("max_concurrent".into(), json!(n));
        }
        Ok(Value::Object(body))
    }
}

pub fn run(args: QueuesArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client(Api::Public)?;
    let json = args.connection.json;
    block_on(async move {
        let answer = match &args.command {
            QueuesCommand::Get { name } => {
                client
                    .call(Method::GET, &queue_path(name), None, &[])
                    .await?
            }
            QueuesCommand::Set(set) => {
                let body = set.to_body()?;
                client
                    .call(Method::PUT, &queue_path(&set.name), Some(&body), &[])
                    .await?
            }
            QueuesCommand::List => client.call(Method::GET, "/v1/queues", None, &[]).await?,
        };
        if json {
            print_json(&answer);
        } else if let QueuesCommand::List = args.command {
            print(&list_text(&answer.body));
        } else {
            print(&queue_text(&answer.body));
        }
        Ok(ExitCode::SUCCESS)
    })?
}

fn queue_path(name: &str) -> String {
    format!("/v1/queues/{}", segment(name))
}

/// `5/s` or `0.5/s, burst 10`; `unlimited` for `null`.
fn rate_text(rate: &Value) -> String {
    match rate {
        Value::Null => "unlimited".into(),
        rate => format!(
            "{}/s, burst {}",
            text(&rate["per_second"]),
            text(&rate["burst"])
        ),
    }
}

fn concurrency_text(n: &Value) -> String {
    match n {
        Value::Null => "unlimited".into(),
        n => text(n),
    }
}

fn queue_text(queue: &Value) -> String {
    key_values(&[
        ("queue", text(&queue["name"])),
        (
            "configured",
            if queue["configured"] == true {
                "yes".into()
            } else {
                "no (defaults)".into()
            },
        ),
        ("max retries", text(&queue["max_retries"])),
        ("backoff", text(&queue["backoff"])),
        ("initial delay", text(&queue["initial_delay"])),
        ("max delay", text(&queue["max_delay"])),
        ("timeout", text(&queue["timeout"])),
        ("max age", text(&queue["max_age"])),
        ("rate limit", rate_text(&queue["rate_limit"])),
        ("max concurrent", concurrency_text(&queue["max_concurrent"])),
        ("updated", text(&queue["updated_at"])),
    ])
}

fn list_text(list: &Value) -> String {
    let mut table = Table::new([
        "queue",
        "retries",
        "backoff",
        "timeout",
        "rate limit",
        "concurrent",
        "updated",
    ]);
    for queue in list["queues"].as_array().into_iter().flatten() {
        table.row([
            text(&queue["name"]),
            text(&queue["max_retries"]),
            text(&queue["backoff"]),
            text(&queue["timeout"]),
            rate_text(&queue["rate_limit"]),
            concurrency_text(&queue["max_concurrent"]),
            text(&queue["updated_at"]),
        ]);
    }
    table.render_or("no queue has a policy; every queue runs on the defaults")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        set: SetArgs,
    }

    fn body(args: &[&str]) -> Value {
        let mut argv = vec!["t", "q"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().set.to_body().unwrap()
    }

    #[test]
    fn flags_make_a_policy() {
        assert_eq!(body(&[]), json!({}));
        assert_eq!(
            body(&[
                "--max-retries",
                "5",
                "--rate-limit",
                "2",
                "--max-concurrent",
                "3"
            ]),
            json!({"max_retries": 5, "rate_limit": 2.0, "max_concurrent": 3})
        );
        assert_eq!(
            body(&["--rate-limit", "0.5", "--burst", "10"]),
            json!({"rate_limit": {"per_second": 0.5, "burst": 10}})
        );
        assert!(Cli::try_parse_from(["t", "q", "--burst", "10"]).is_err());
    }

    #[test]
    fn list_renders_limits() {
        let list = json!({"queues": [
            {"name": "orders", "max_retries": 5, "backoff": "exponential", "timeout": "30s",
             "rate_limit": {"per_second": 2.0, "burst": 2}, "max_concurrent": 3, "updated_at": "u"},
            {"name": "emails", "max_retries": 3, "backoff": "fixed", "timeout": "5s",
             "rate_limit": null, "max_concurrent": null, "updated_at": "v"}
        ]});
        assert_eq!(
            list_text(&list),
            "QUEUE   RETRIES  BACKOFF      TIMEOUT  RATE LIMIT      CONCURRENT  UPDATED\n\
             orders  5        exponential  30s      2.0/s, burst 2  3           u\n\
             emails  3        fixed        5s       unlimited       unlimited   v\n"
        );
        assert_eq!(
            list_text(&json!({"queues": []})),
            "no queue has a policy; every queue runs on the defaults\n"
        );
    }
}
