//! The `azmutex` command-line tool (cargo feature `cli`). See `azmutex --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
