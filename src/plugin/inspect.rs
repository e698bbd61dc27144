//! `kubectl latchkey inspect`: reads ONE key or token on standard input
//! (never from the command line: arguments end up in shell history and in
//! `ps`), says what it is locally, then asks the cluster where it stands.

use super::cluster::{Cluster, KubeFlags, Target};
use super::error::PluginError;
use super::{jwt, keys, table};
use crate::crd::{ApiKey, TokenPolicy};
use crate::key::ApiKeyValue;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Resource};
use std::io::Read;

/// More than any key or token (a token is at most 8 KiB).
const MAX_INPUT: u64 = 16 * 1024;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Refused: the key or token is read from standard input only.
    #[arg(hide = true, num_args = 0..)]
    pub refused: Vec<String>,
    /// Only what the input itself says: no cluster lookup.
    #[arg(long)]
    pub offline: bool,
}

/// What was read on standard input.
#[derive(Debug, PartialEq)]
pub enum Input<'a> {
    Jwt(&'a str),
    Key(&'a str),
}

/// A JWT has exactly two dots; a latchkey key has none.
pub fn classify_input(text: &str) -> Input<'_> {
    if text.matches('.').count() == 2 {
        Input::Jwt(text)
    } else {
        Input::Key(text)
    }
}

pub async fn run(flags: &KubeFlags, args: InspectArgs) -> Result<(), PluginError> {
    if !args.refused.is_empty() {
        return Err(PluginError::Refused(
            "inspect reads the key or token from standard input, never from the command line \
             (arguments stay in shell history and show in `ps`): run `kubectl latchkey inspect < FILE`, \
             or paste it and press Ctrl-D"
                .to_owned(),
        ));
    }
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_string(&mut text)
        .map_err(|e| PluginError::Input(format!("could not read standard input: {e}")))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(PluginError::Input(
            "nothing on standard input: pipe ONE key or token into `kubectl latchkey inspect`".to_owned(),
        ));
    }
    let now = Timestamp::now();
    match classify_input(text) {
        Input::Jwt(token) => inspect_token(flags, &args, token, now).await,
        Input::Key(key) => inspect_key(flags, &args, key, now).await,
    }
}

/// The namespaces searched: `-n` alone when given, else every namespace
/// (the context's namespace when listing cluster-wide is forbidden).
async fn list_scoped<K>(
    cluster: &Cluster,
    flags: &KubeFlags,
    target: Target<'static>,
) -> Result<(Vec<K>, String), PluginError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let ns = cluster.namespace.as_str();
    let namespaced = || async {
        Api::<K>::namespaced(cluster.client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map(|l| (l.items, format!("namespace {ns}")))
            .map_err(|e| {
                cluster.error(
                    e,
                    "list",
                    Target {
                        namespace: Some(ns),
                        ..target
                    },
                )
            })
    };
    if flags.namespace.is_some() {
        return namespaced().await;
    }
    match Api::<K>::all(cluster.client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => Ok((list.items, "any namespace".to_owned())),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            let (items, scope) = namespaced().await?;
            Ok((
                items,
                format!("{scope} (listing every namespace is forbidden to you)"),
            ))
        }
        Err(e) => Err(cluster.error(e, "list", target)),
    }
}

async fn inspect_key(
    flags: &KubeFlags,
    args: &InspectArgs,
    text: &str,
    now: Timestamp,
) -> Result<(), PluginError> {
    let key = match ApiKeyValue::parse(text) {
        Ok(key) => key,
        Err(reason) => {
            println!("not a latchkey API key: {reason}");
            return Err(PluginError::Input(format!(
                "the input is not a valid latchkey API key ({reason})"
            )));
        }
    };
    println!("latchkey API key");
    println!("format:    valid (prefix, length, alphabet and checksum)");
    println!("key id:    {}", key.key_id());
    if args.offline {
        return Ok(());
    }
    let cluster = Cluster::connect(flags).await?;
    let (api_keys, scope) = list_scoped::<ApiKey>(&cluster, flags, Target::api_keys(None)).await?;
    let sha = key.sha256_hex();
    let found: Vec<keys::Standing> = api_keys
        .iter()
        .filter_map(|ak| keys::standing(ak, key.key_id(), &sha, now))
        .collect();
    if found.is_empty() {
        println!(
            "status:    unknown or retired: no ApiKey in {scope} lists key id {} \
             (its grace period ended, its ApiKey was deleted, or latchkey never issued it here)",
            key.key_id()
        );
        println!("valid:     no");
        return Ok(());
    }
    for s in &found {
        println!("status:    {}", s.describe(now));
        let used = table::relative_or_dash(now, s.last_used);
        let whose = if s.per_key_usage {
            "this key"
        } else {
            "any key of the ApiKey"
        };
        println!("last used: {used} ({whose})");
        println!("valid:     {}", if s.valid(now) { "yes" } else { "no" });
    }
    Ok(())
}

async fn inspect_token(
    flags: &KubeFlags,
    args: &InspectArgs,
    text: &str,
    now: Timestamp,
) -> Result<(), PluginError> {
    let token = jwt::decode_unverified(text)
        .map_err(|e| PluginError::Input(format!("the input looks like a JWT but is not one: {e}")))?;
    print!("{}", jwt::render(&token, now));
    if let Some(exp) = token.claims.get("exp").and_then(|v| v.as_i64())
        && exp <= now.as_second()
    {
        println!("expired:   yes (exp has passed)");
    }
    if args.offline {
        return Ok(());
    }
    let Some(kid) = token.kid() else {
        println!("kid:       none in the header: no latchkey server accepts this token");
        return Ok(());
    };
    let cluster = Cluster::connect(flags).await?;
    let (policies, scope) = list_scoped::<TokenPolicy>(&cluster, flags, Target::token_policies(None)).await?;
    let found = jwt::publishers(&policies, kid, now);
    if found.is_empty() {
        println!(
            "kid {kid} is not published by any TokenPolicy in {scope}: no latchkey server there accepts it"
        );
    }
    let iss = token.claims.get("iss").and_then(|v| v.as_str());
    for p in &found {
        println!("{}", p.describe(iss, now));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_dots_make_a_jwt() {
        assert_eq!(classify_input("a.b.c"), Input::Jwt("a.b.c"));
        assert_eq!(classify_input("lk_abc_def"), Input::Key("lk_abc_def"));
        assert_eq!(classify_input("a.b"), Input::Key("a.b"));
    }
}
