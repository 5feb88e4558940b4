//! `ternctl`: developer tools for Tern.
//!
//! - `ternctl tasks|queues|schedules|routes …`: a client of the public API.
//! - `ternctl dlq …`: a client of the admin API's dead-letter queue.
//! - `ternctl listen`: a webhook receiver that prints every request and checks its
//!   Standard Webhooks signature.
//! - `ternctl verify`: checks the signature of a captured raw HTTP request.
//!
//! The binary is a thin `main` over [`main`], so the end-to-end tests can build the
//! same program inside their own package.

mod client;
mod connection;
mod dlq;
mod env_file;
mod json_arg;
mod listen;
mod output;
mod policy_flags;
mod queues;
mod request_parse;
mod routes;
mod schedules;
mod table;
mod tasks;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ternctl",
    bin_name = "ternctl",
    version,
    about = "Developer tools for Tern",
    long_about = "Developer tools for Tern.\n\n\
        The API commands find the API with --url/--api-key (--admin-url/--admin-token for \
        dlq), else TERN_URL, TERN_API_KEY, TERN_ADMIN_URL, TERN_ADMIN_TOKEN from the \
        environment, else from .tern/dev.env (written by `make run`) in the current \
        directory or a parent. They print tables; --json prints the API's JSON.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit, show and cancel tasks.
    Tasks(tasks::TasksArgs),
    /// Show and set queue policies (retries, rate and concurrency limits).
    Queues(queues::QueuesArgs),
    /// Inspect, re-drive and purge dead letters (admin API).
    Dlq(dlq::DlqArgs),
    /// Create, show, list and delete recurring schedules.
    Schedules(schedules::SchedulesArgs),
    /// Create, show and delete proxy routes.
    Routes(routes::RoutesArgs),
    /// Run a webhook receiver that prints every request and checks its signature.
    Listen(listen::ListenArgs),
    /// Check the signature of a raw HTTP request (request line, headers, blank line,
    /// body) read from standard input.
    Verify(verify::VerifyArgs),
}

/// Runs `ternctl` with the process's arguments; errors print as `error: …` with a
/// non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tasks(args) => tasks::run(args),
        Command::Queues(args) => queues::run(args),
        Command::Dlq(args) => dlq::run(args),
        Command::Schedules(args) => schedules::run(args),
        Command::Routes(args) => routes::run(args),
        Command::Listen(args) => listen::run(args),
        Command::Verify(args) => verify::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
