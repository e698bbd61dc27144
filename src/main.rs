#![forbid(unsafe_code)]
//! The `latchkey` binary: parse the command line and run it (see [`latchkey::cli`]).

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match latchkey::cli::Cli::parse().run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "latchkey stopped with an error");
            eprintln!("latchkey: {err}");
            ExitCode::FAILURE
        }
    }
}
