//! `kubectl latchkey status [NAME] [-n NS | -A] [--kind apikey|tokenpolicy]`.

use super::cluster::{Cluster, KubeFlags, Target};
use super::error::PluginError;
use super::{keys, table};
use crate::conditions;
use crate::crd::{ApiKey, TokenPolicy};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;

/// Which kind `status` shows.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    #[value(alias = "apikeys", alias = "ak")]
    Apikey,
    #[value(alias = "tokenpolicies", alias = "tp")]
    Tokenpolicy,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// One ApiKey (or TokenPolicy): adds a table of its keys.
    pub name: Option<String>,
    /// Every namespace (needs `list` on the kind cluster-wide).
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// The kind to show.
    #[arg(long, value_enum, default_value_t = Kind::Apikey)]
    pub kind: Kind,
}

pub async fn run(flags: &KubeFlags, args: StatusArgs) -> Result<(), PluginError> {
    let cluster = Cluster::connect(flags).await?;
    let now = Timestamp::now();
    let out = match args.kind {
        Kind::Apikey => api_keys(&cluster, &args, now).await?,
        Kind::Tokenpolicy => token_policies(&cluster, &args, now).await?,
    };
    print!("{out}");
    Ok(())
}

async fn api_keys(cluster: &Cluster, args: &StatusArgs, now: Timestamp) -> Result<String, PluginError> {
    let ns = cluster.namespace.as_str();
    if let Some(name) = &args.name {
        let api: Api<ApiKey> = Api::namespaced(cluster.client.clone(), ns);
        let ak = api
            .get(name)
            .await
            .map_err(|e| cluster.error(e, "get", Target::api_keys(Some(ns)).named(name)))?;
        let mut out = table::render(&keys::status_headers(false), &[keys::status_row(&ak, false, now)]);
        let rows = keys::key_rows(&ak, now);
        if !rows.is_empty() {
            out.push('\n');
            out.push_str(&table::render(&keys::KEY_HEADERS, &rows));
        }
        return Ok(out);
    }
    let (api, scope): (Api<ApiKey>, _) = if args.all_namespaces {
        (Api::all(cluster.client.clone()), None)
    } else {
        (Api::namespaced(cluster.client.clone(), ns), Some(ns))
    };
    let mut list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| cluster.error(e, "list", Target::api_keys(scope)))?
        .items;
    if list.is_empty() {
        return Ok(match scope {
            Some(ns) => format!("No ApiKeys in namespace {ns}.\n"),
            None => "No ApiKeys in any namespace.\n".to_owned(),
        });
    }
    list.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|ak| keys::status_row(ak, args.all_namespaces, now))
        .collect();
    Ok(table::render(&keys::status_headers(args.all_namespaces), &rows))
}

/// One row of the TokenPolicy table.
pub fn policy_row(p: &TokenPolicy, all_namespaces: bool, now: Timestamp) -> Vec<String> {
    let status = p.status.clone().unwrap_or_default();
    let (ready, reason) = match conditions::find(&status.conditions, conditions::READY) {
        Some(c) => (c.status.clone(), c.reason.clone()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    let mut row = vec![
        p.metadata.name.clone().unwrap_or_default(),
        ready,
        reason,
        status.active_key_id.clone().unwrap_or_else(|| "-".to_owned()),
        status.keys.len().to_string(),
        table::relative_or_dash(now, status.next_rotation_at.as_ref().map(|t| t.0)),
        status.issuer.clone().unwrap_or_else(|| "-".to_owned()),
    ];
    if all_namespaces {
        row.insert(0, p.metadata.namespace.clone().unwrap_or_default());
    }
    row
}

async fn token_policies(cluster: &Cluster, args: &StatusArgs, now: Timestamp) -> Result<String, PluginError> {
    let ns = cluster.namespace.as_str();
    let (api, scope): (Api<TokenPolicy>, _) = if args.all_namespaces {
        (Api::all(cluster.client.clone()), None)
    } else {
        (Api::namespaced(cluster.client.clone(), ns), Some(ns))
    };
    let mut list = match &args.name {
        Some(name) => vec![
            api.get(name)
                .await
                .map_err(|e| cluster.error(e, "get", Target::token_policies(scope).named(name)))?,
        ],
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(|e| cluster.error(e, "list", Target::token_policies(scope)))?
                .items
        }
    };
    if list.is_empty() {
        return Ok(match scope {
            Some(ns) => format!("No TokenPolicies in namespace {ns}.\n"),
            None => "No TokenPolicies in any namespace.\n".to_owned(),
        });
    }
    list.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut headers = vec![
        "NAME",
        "READY",
        "REASON",
        "SIGNING KID",
        "KEYS",
        "NEXT ROTATION",
        "ISSUER",
    ];
    if args.all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| policy_row(p, args.all_namespaces, now))
        .collect();
    Ok(table::render(&headers, &rows))
}
