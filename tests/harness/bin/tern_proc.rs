//! `tern-proc`: runs one Tern service as its own process for failure tests.
//!
//! Integration tests can only rely on binaries of their own package being built, so
//! this wrapper runs the chosen service through exactly the same entry point as the
//! real binaries (`tern_core::service::main` with the service's `run`). The service
//! is named by `TERN_PROC_SERVICE`; arguments are the usual `--config <file>`.

fn main() -> std::process::ExitCode {
    match std::env::var("TERN_PROC_SERVICE").as_deref() {
        Ok("ingress") => tern_core::service::main("tern-ingress", tern_ingress::run),
        Ok("scheduler") => tern_core::service::main("tern-scheduler", tern_scheduler::run),
        Ok("delivery-worker") => {
            tern_core::service::main("tern-delivery-worker", tern_delivery_worker::run)
        }
        Ok("callback-resolver") => {
            tern_core::service::main("tern-callback-resolver", tern_callback_resolver::run)
        }
        other => {
            eprintln!("tern-proc: set TERN_PROC_SERVICE to a service name, got {other:?}");
            std::process::ExitCode::from(2)
        }
    }
}
