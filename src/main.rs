fn main() -> std::process::ExitCode {
    samvault::cli::run()
}
