//! `tern-callback-resolver`: resolves await-callback tasks when providers call back.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tern_core::service::main("tern-callback-resolver", tern_callback_resolver::run)
}
