//! `tern-callback-resolver`: resolves await-callback tasks when providers call back.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tern_core::service::main("tern-callback-resolver", tern_callback_resolver::run).await
}
