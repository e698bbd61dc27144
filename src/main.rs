#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use latchkey::clock::SystemClock;
use latchkey::controller::{self, Context};
use latchkey::{Error, crd, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// latchkey: rotated API keys and short-lived tokens for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "latchkey", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (the files in crds/ are this output).
    Crd,
    /// Run the controller that turns ApiKeys into Secrets.
    Controller(ControllerArgs),
}

#[derive(clap::Args, Debug)]
struct KubeArgs {
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster service account.
    #[arg(long, env = "LATCHKEY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log one JSON object per line instead of plain text (filter with RUST_LOG).
    #[arg(long, env = "LATCHKEY_LOG_JSON")]
    log_json: bool,
}

#[derive(clap::Args, Debug)]
struct ControllerArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// Watch ApiKeys in this namespace only (default: every namespace).
    #[arg(long, env = "LATCHKEY_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// How many ApiKeys are reconciled at the same time.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Name of this instance in Events (for example the pod name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => {
            print_crds();
            Ok(())
        }
        Command::Controller(args) => run_controller(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "latchkey stopped with an error");
            eprintln!("latchkey: {err}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds() {
    for (i, (_, crd)) in crd::all().iter().enumerate() {
        if i > 0 {
            println!("---");
        }
        print!("{}", crd::to_yaml(crd));
    }
}

async fn run_controller(args: ControllerArgs) -> Result<(), Error> {
    telemetry::init(args.kube.log_json);
    let client = latchkey::client::from_kubeconfig(args.kube.kubeconfig.as_deref()).await?;
    let ctx = Arc::new(Context::new(client, Arc::new(SystemClock), args.instance));
    controller::run(
        ctx,
        controller::Options {
            namespace: args.watch_namespace,
            concurrency: args.concurrency,
        },
    )
    .await
}
