//! The `carebridge` command: parse the command line and run it.

fn main() -> std::process::ExitCode {
    carebridge::cli::main()
}
