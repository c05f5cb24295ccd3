//! The `samvault` binary: the command line over the library (`src/lib.rs`).

mod cli;

// The token path allocates a few dozen small buffers per request: mimalloc's per-thread
// free lists serve them without glibc's arena locks and consolidation (measured in
// docs/ARCHITECTURE.md, "The hot path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run()
}
