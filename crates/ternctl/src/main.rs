//! `ternctl`: developer tools for Tern (see the library for the commands).

fn main() -> std::process::ExitCode {
    ternctl::main()
}
