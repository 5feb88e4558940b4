//! `tern-delivery-worker`: executes HTTP deliveries from the READY stream.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tern_core::service::main("tern-delivery-worker", tern_delivery_worker::run)
}
