//! `ternctl-e2e`: the `ternctl` program, built inside this package.
//!
//! Integration tests can only rely on binaries of their own package being built, so
//! this runs exactly the entry point of the real `ternctl` binary.

fn main() -> std::process::ExitCode {
    ternctl::main()
}
