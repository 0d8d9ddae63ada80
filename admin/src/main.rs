//! `shutoff-admin`: see the library for what each command does.

use std::process::ExitCode;

use clap::Parser;
use shutoff_admin::{Cli, exit_code, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
