//! `tern-ingress`: the public API binary.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tern_core::service::main("tern-ingress", tern_ingress::run)
}
