#![forbid(unsafe_code)]
//! The `kubectl-latchkey` binary (`kubectl latchkey` on `PATH`): parse the
//! command line and run it (see [`latchkey::plugin`]).

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match latchkey::plugin::Plugin::parse().run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
