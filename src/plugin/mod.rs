//! `kubectl latchkey`: a kubectl plugin for ApiKeys and TokenPolicies, in
//! the spirit of cert-manager's `cmctl` (the `kubectl-latchkey` binary; on
//! `PATH` kubectl runs it as `kubectl latchkey`).
//!
//! On the CLI layer, beside [`crate::cli`]: pure views ([`table`], [`keys`],
//! [`jwt`]) take no client and an injected `now`; one file per command
//! fetches, calls them and prints. It writes only the `latchkey.dev/rotate`
//! annotation (`rotate`) and `spec.revoked` (`revoke`, the one place
//! latchkey's tooling writes a spec), as field manager [`FIELD_MANAGER`].
//! It never prints a key, only key ids; `token` prints the token it was
//! asked for.

pub mod cluster;
pub mod error;
pub mod inspect;
pub mod jwt;
pub mod keys;
pub mod revoke;
pub mod rotate;
pub mod status;
pub mod table;
pub mod token;

pub use error::PluginError;

use clap::{Parser, Subcommand};

/// The field manager of the plugin's writes (not the controller's `latchkey`).
pub const FIELD_MANAGER: &str = "kubectl-latchkey";

/// kubectl latchkey: look at and operate latchkey's ApiKeys and TokenPolicies.
///
/// Uses your kubeconfig and its rights, like kubectl. Never prints a key
/// (only key ids).
#[derive(Parser, Debug)]
#[command(name = "kubectl latchkey", bin_name = "kubectl latchkey", version)]
pub struct Plugin {
    #[command(flatten)]
    kube: cluster::KubeFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A table of ApiKeys (or TokenPolicies): Ready, key id, revision, last
    /// use, next rotation, previous keys and their grace end, expiry.
    Status(status::StatusArgs),
    /// Rotate an ApiKey now (the latchkey.dev/rotate annotation) and wait
    /// until the new key is delivered; prints the new key id.
    Rotate(rotate::RotateArgs),
    /// Revoke every key of an ApiKey at once (spec.revoked: true; permanent).
    Revoke(revoke::RevokeArgs),
    /// Read ONE API key or token on standard input and say what it is:
    /// format, key id, and which ApiKey lists it in which state; for a JWT
    /// its header and claims (UNVERIFIED) and which TokenPolicy publishes
    /// its kid.
    Inspect(inspect::InspectArgs),
    /// Exchange the key of an ApiKey's Secret for a token at a latchkey
    /// server's /token; prints only the token.
    Token(token::TokenArgs),
}

impl Plugin {
    /// Runs the command.
    pub async fn run(self) -> Result<(), PluginError> {
        match self.command {
            Command::Status(args) => status::run(&self.kube, args).await,
            Command::Rotate(args) => rotate::run(&self.kube, args).await,
            Command::Revoke(args) => revoke::run(&self.kube, args).await,
            Command::Inspect(args) => inspect::run(&self.kube, args).await,
            Command::Token(args) => token::run(&self.kube, args).await,
        }
    }
}
