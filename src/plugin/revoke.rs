//! `kubectl latchkey revoke NAME [--yes]`: sets `spec.revoked: true` (a
//! merge patch as field manager `kubectl-latchkey`), the one place
//! latchkey's tooling writes a spec. Asks on a terminal; refuses without
//! `--yes` when standard input is not one.

use super::cluster::{Cluster, KubeFlags};
use super::error::PluginError;
use std::io::{BufRead, IsTerminal, Write};

#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    /// The ApiKey.
    pub name: String,
    /// Do not ask for confirmation (needed when standard input is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Whether the answer typed at the prompt confirms revoking `name`.
pub fn confirmed(answer: &str, name: &str) -> bool {
    let answer = answer.trim();
    answer == name || answer.eq_ignore_ascii_case("yes")
}

pub async fn run(flags: &KubeFlags, args: RevokeArgs) -> Result<(), PluginError> {
    let cluster = Cluster::connect(flags).await?;
    let ns = cluster.namespace.clone();
    let (api, ak) = cluster.api_key(&args.name).await?;
    if ak.is_revoked() {
        println!("ApiKey {ns}/{} is already revoked", args.name);
        return Ok(());
    }
    if !args.yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(PluginError::Refused(format!(
                "refusing to revoke ApiKey {ns}/{} without confirmation: standard input is not a terminal; \
                 pass --yes to revoke it",
                args.name
            )));
        }
        eprint!(
            "Revoke every key of ApiKey {ns}/{}? This cannot be undone. Type its name (or yes) to confirm: ",
            args.name
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|e| PluginError::Input(format!("could not read the confirmation: {e}")))?;
        if !confirmed(&answer, &args.name) {
            return Err(PluginError::Refused(format!(
                "not confirmed: ApiKey {ns}/{} is unchanged",
                args.name
            )));
        }
    }
    let patch = serde_json::json!({"spec": {"revoked": true}});
    cluster.patch_api_key(&api, &args.name, patch).await?;
    println!(
        "ApiKey {ns}/{} revoked: latchkey servers refuse its keys within about a second",
        args.name
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::confirmed;

    #[test]
    fn only_the_name_or_yes_confirms() {
        assert!(confirmed("frontend\n", "frontend"));
        assert!(confirmed("YES\n", "frontend"));
        assert!(!confirmed("\n", "frontend"));
        assert!(!confirmed("y\n", "frontend"));
        assert!(!confirmed("front\n", "frontend"));
    }
}
