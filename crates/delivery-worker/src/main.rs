//! `tern-delivery-worker`: executes HTTP deliveries from the READY stream.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tern_core::service::main("tern-delivery-worker", tern_delivery_worker::run).await
}
