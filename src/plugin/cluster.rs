//! The cluster as `kubectl latchkey` sees it: the kubeconfig, context and
//! namespace like kubectl chooses them, and Kubernetes errors turned into
//! [`PluginError`]s that name the kubeconfig, the verb and the resource.

use super::error::PluginError;
use crate::crd::ApiKey;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::path::PathBuf;

/// Which cluster to talk to, like kubectl's flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeFlags {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// A client with what error messages name.
pub struct Cluster {
    pub client: Client,
    /// `-n`, or the context's namespace.
    pub namespace: String,
    pub context: String,
    pub kubeconfig: String,
    pub server: String,
    pub user: String,
}

impl Cluster {
    /// Loads the kubeconfig like kubectl (no request is made yet).
    pub async fn connect(flags: &KubeFlags) -> Result<Self, PluginError> {
        let kubeconfig_name = match (&flags.kubeconfig, std::env::var("KUBECONFIG")) {
            (Some(path), _) => path.display().to_string(),
            (None, Ok(env)) if !env.is_empty() => env,
            _ => "~/.kube/config".to_owned(),
        };
        let load_err = |message: String| PluginError::Kubeconfig {
            kubeconfig: kubeconfig_name.clone(),
            message,
        };
        let kubeconfig = match &flags.kubeconfig {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        }
        .map_err(|e| load_err(e.to_string()))?;
        let context = flags
            .context
            .clone()
            .or_else(|| kubeconfig.current_context.clone())
            .unwrap_or_default();
        let user = kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.context.as_ref())
            .and_then(|c| c.user.clone())
            .unwrap_or_else(|| "the kubeconfig's user".to_owned());
        if !kubeconfig.contexts.iter().any(|c| c.name == context) {
            let known: Vec<&str> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
            return Err(PluginError::UnknownContext {
                context,
                kubeconfig: kubeconfig_name,
                known: if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
            });
        }
        let options = KubeConfigOptions {
            context: flags.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| load_err(e.to_string()))?;
        let namespace = flags
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| load_err(e.to_string()))?;
        Ok(Self {
            client,
            namespace,
            context,
            kubeconfig: kubeconfig_name,
            server,
            user: format!("user {user:?}"),
        })
    }

    /// The ApiKey `name` of the namespace in use (read fresh), and its `Api`,
    /// for the commands that act on one.
    pub async fn api_key(&self, name: &str) -> Result<(Api<ApiKey>, ApiKey), PluginError> {
        let api = Api::namespaced(self.client.clone(), &self.namespace);
        let target = Target::api_keys(Some(&self.namespace)).named(name);
        let api_key = api.get(name).await.map_err(|e| self.error(e, "get", target))?;
        Ok((api, api_key))
    }

    /// Merge-patches the ApiKey `name` of the namespace in use with `patch`,
    /// as the plugin's own field manager (never the controller's).
    pub async fn patch_api_key(
        &self,
        api: &Api<ApiKey>,
        name: &str,
        patch: serde_json::Value,
    ) -> Result<(), PluginError> {
        let target = Target::api_keys(Some(&self.namespace)).named(name);
        api.patch(
            name,
            &PatchParams::apply(super::FIELD_MANAGER),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| self.error(e, "patch", target))?;
        Ok(())
    }

    /// A Kubernetes error as a [`PluginError`]: 403 names verb and resource,
    /// 404 of a named object names it, transport errors name the server.
    pub fn error(&self, err: kube::Error, verb: &'static str, what: Target<'_>) -> PluginError {
        match err {
            kube::Error::Api(status) if status.code == 403 => PluginError::Forbidden {
                user: self.user.clone(),
                verb,
                resource: match what.namespace {
                    Some(ns) => format!("{} in namespace {ns:?}", what.resource),
                    None => format!("{} in all namespaces (cluster-wide)", what.resource),
                },
                context: self.context.clone(),
                message: status.message.clone(),
            },
            kube::Error::Api(status) if status.code == 404 && what.name.is_none() => {
                PluginError::NotInstalled {
                    verb,
                    resource: what.resource.to_owned(),
                    server: self.server.clone(),
                }
            }
            kube::Error::Api(status) if status.code == 404 && what.name.is_some() => {
                let namespace = what.namespace.unwrap_or_default().to_owned();
                PluginError::NotFound {
                    kind: what.kind,
                    name: what.name.unwrap_or_default().to_owned(),
                    hint: not_found_hint(what.kind, &namespace),
                    namespace,
                }
            }
            kube::Error::Api(status) => PluginError::Api {
                verb,
                resource: what.resource.to_owned(),
                message: status.message.clone(),
            },
            other => PluginError::Unreachable {
                server: self.server.clone(),
                context: self.context.clone(),
                kubeconfig: self.kubeconfig.clone(),
                message: source_chain(&other),
            },
        }
    }
}

/// What to run to see the objects of `kind` that do exist.
fn not_found_hint(kind: &str, namespace: &str) -> String {
    match kind {
        "ApiKey" => format!("list them with `kubectl latchkey status -n {namespace}`"),
        "TokenPolicy" => {
            format!("list them with `kubectl latchkey status --kind tokenpolicy -n {namespace}`")
        }
        _ => format!(
            "name an ApiKey's Secret (its status.secretName; `kubectl get apikeys -n {namespace} -o wide`)"
        ),
    }
}

/// The object or collection a request was about.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub kind: &'static str,
    pub resource: &'static str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl<'a> Target<'a> {
    pub fn api_keys(namespace: Option<&'a str>) -> Self {
        Self {
            kind: "ApiKey",
            resource: "apikeys.latchkey.dev",
            namespace,
            name: None,
        }
    }
    pub fn token_policies(namespace: Option<&'a str>) -> Self {
        Self {
            kind: "TokenPolicy",
            resource: "tokenpolicies.latchkey.dev",
            namespace,
            name: None,
        }
    }
    pub fn secrets(namespace: Option<&'a str>) -> Self {
        Self {
            kind: "Secret",
            resource: "secrets",
            namespace,
            name: None,
        }
    }
    pub fn named(self, name: &'a str) -> Self {
        Self {
            name: Some(name),
            ..self
        }
    }
}

/// An error and its sources on one line (the root cause says "Connection refused").
pub fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
