//! `ternctl`: developer tools for Tern.
//!
//! - `ternctl listen`: a webhook receiver that prints every request and checks its
//!   Standard Webhooks signature.
//! - `ternctl verify`: checks the signature of a captured raw HTTP request.

mod listen;
mod request_parse;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ternctl",
    version,
    about = "Developer tools for Tern",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a webhook receiver that prints every request and checks its signature.
    Listen(listen::ListenArgs),
    /// Check the signature of a raw HTTP request (request line, headers, blank line,
    /// body) read from standard input.
    Verify(verify::VerifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Listen(args) => listen::run(args),
        Command::Verify(args) => verify::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ternctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}
