//! `ternctl routes`: proxy routes (`/v1/routes/{key}`), which cascade one proxied call
//! over several upstream targets.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{block_on, segment};
use crate::connection::{Api, ConnectionArgs};
use crate::json_arg;
use crate::output::{print, print_json};
use crate::table::{Table, key_values, text};

#[derive(Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: RoutesCommand,
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// Create or replace a route (PUT /v1/routes/{key}).
    Put(PutArgs),
    /// Show a route; header values are never shown (GET /v1/routes/{key}).
    Get {
        /// Route key.
        key: String,
    },
    /// Delete a route (DELETE /v1/routes/{key}).
    Delete {
        /// Route key.
        key: String,
    },
}

#[derive(Args)]
struct PutArgs {
    /// Route key.
    key: String,
    /// A target URL, tried in the order given; repeat for a cascade.
    #[arg(long = "target", value_name = "URL", required_unless_present = "body")]
    targets: Vec<String>,
    /// Time limit of each target's call (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Extra calls of each target within a round (0-10).
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// The whole route instead of the flags above, e.g. with per-target headers:
    /// '{"targets":[{"url":"…","headers":{"Authorization":"Bearer …"}}]}' (JSON,
    /// @file, or -).
    #[arg(long, value_name = "JSON", conflicts_with_all = ["targets", "timeout", "retries"])]
    body: Option<String>,
}

impl PutArgs {
    fn to_body(&self) -> anyhow::Result<Value> {
        if let Some(body) = &self.body {
            return json_arg::read(body, "--body");
        }
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|url| {
                let mut target = Map::new();
                target.insert("url".into(), json!(url));
                if let Some(timeout) = &self.timeout {
                    target.insert("timeout".into(), json!(timeout));
                }
                if let Some(retries) = self.retries {
                    target.insert("retries".into(), json!(retries));
                }
                Value::Object(target)
            })
            .collect();
        Ok(json!({ "targets": targets }))
    }
}

pub fn run(args: RoutesArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client(Api::Public)?;
    let json = args.connection.json;
    block_on(async move {
        match &args.command {
            RoutesCommand::Put(put) => {
                let body = put.to_body()?;
                let answer = client
                    .call(Method::PUT, &route_path(&put.key), Some(&body), &[])
                    .await?;
                if json {
                    print_json(&answer);
                } else {
                    print(&route_text(&answer.body));
                }
            }
            RoutesCommand::Get { key } => {
                let answer = client
                    .call(Method::GET, &route_path(key), None, &[])
                    .await?;
                if json {
                    print_json(&answer);
                } else {
                    print(&route_text(&answer.body));
                }
            }
            RoutesCommand::Delete { key } => {
                // `204 No Content`: nothing to print with --json.
                client
                    .call(Method::DELETE, &route_path(key), None, &[])
                    .await?;
                if !json {
                    print(&format!("route {key} deleted\n"));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })?
}

fn route_path(key: &str) -> String {
    format!("/v1/routes/{}", segment(key))
}

fn route_text(route: &Value) -> String {
    let mut out = key_values(&[
        ("route", text(&route["key"])),
        ("updated", text(&route["updated_at"])),
    ]);
    let mut table = Table::new(["#", "url", "headers", "timeout", "retries"]);
    for (i, target) in route["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let headers: Vec<String> = target["header_names"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        table.row([
            (i + 1).to_string(),
            text(&target["url"]),
            headers.join(", "),
            text(&target["timeout"]),
            text(&target["retries"]),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        put: PutArgs,
    }

    fn body(args: &[&str]) -> Value {
        let mut argv = vec!["t", "key"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().put.to_body().unwrap()
    }

    #[test]
    fn targets_in_order_with_shared_settings() {
        assert_eq!(
            body(&[
                "--target",
                "https://a",
                "--target",
                "https://b",
                "--timeout",
                "10s",
                "--retries",
                "1"
            ]),
            json!({"targets": [
                {"url": "https://a", "timeout": "10s", "retries": 1},
                {"url": "https://b", "timeout": "10s", "retries": 1}
            ]})
        );
        assert_eq!(
            body(&[
                "--body",
                r#"{"targets":[{"url":"https://a","headers":{"X":"y"}}]}"#
            ]),
            json!({"targets": [{"url": "https://a", "headers": {"X": "y"}}]})
        );
        assert!(Cli::try_parse_from(["t", "key"]).is_err());
        assert!(
            Cli::try_parse_from(["t", "key", "--body", "{}", "--target", "https://a"]).is_err()
        );
    }

    #[test]
    fn a_route_shows_header_names_only() {
        let route = json!({"key": "ai", "updated_at": "u", "targets": [
            {"url": "https://a", "header_names": ["authorization", "x-org"], "timeout": "10s", "retries": 0},
            {"url": "https://b", "header_names": [], "retries": 1}
        ]});
        assert_eq!(
            route_text(&route),
            "route:    ai\nupdated:  u\n\n\
             #  URL        HEADERS               TIMEOUT  RETRIES\n\
             1  https://a  authorization, x-org  10s      0\n\
             2  https://b                                 1\n"
        );
    }
}
