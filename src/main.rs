//! The `ferry` binary: the command line is `ferry::cli`.

fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
