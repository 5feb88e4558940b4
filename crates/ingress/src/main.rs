//! `tern-ingress`: the public API binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tern_core::service::main("tern-ingress", tern_ingress::run).await
}
