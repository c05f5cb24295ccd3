//! The `samvault` binary: the command line over the library (`src/lib.rs`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
