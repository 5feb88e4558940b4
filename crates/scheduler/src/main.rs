//! `tern-scheduler`: moves accepted work to the ready queue when it is due.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tern_core::service::main("tern-scheduler", tern_scheduler::run).await
}
