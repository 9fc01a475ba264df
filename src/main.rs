//! The `carebridge` command: parse the command line and run it.

/// mimalloc instead of the system allocator: a request parses, validates and serialises
/// thousands of small strings and maps, and glibc's malloc and free were about a quarter of the
/// server's instructions during ingest (see ARCHITECTURE.md, "Crates and why").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    carebridge::cli::main()
}
