//! `eventbus`: see `eventbus --help`.

fn main() -> std::process::ExitCode {
    eventbus_cli::main()
}
