//! `tern-scheduler`: moves accepted work to the ready queue when it is due.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tern_core::service::main("tern-scheduler", tern_scheduler::run)
}
