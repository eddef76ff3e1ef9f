//! The `shoal` binary: parses the command line and maps errors to an exit code. Everything else
//! lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shoal::cli::Cli::parse();
    match shoal::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
