//! The errors of `kubectl latchkey`: each says what to change. None carries
//! a key, a token or a Secret's data.

/// An error of a `kubectl latchkey` command.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot load the kubeconfig {kubeconfig}: {message}; pass --kubeconfig FILE or set KUBECONFIG")]
    Kubeconfig { kubeconfig: String, message: String },
    #[error(
        "cannot reach the cluster at {server} (context {context:?} of kubeconfig {kubeconfig}): {message}; \
         check that the cluster is up and that --kubeconfig/--context name the right one"
    )]
    Unreachable {
        server: String,
        context: String,
        kubeconfig: String,
        message: String,
    },
    #[error(
        "forbidden: {user} may not {verb} {resource} (context {context:?}; the API server says: {message}); \
         ask for that RBAC right, or use another --context or namespace"
    )]
    Forbidden {
        user: String,
        verb: &'static str,
        /// The resource and where: `apikeys.latchkey.dev in namespace "shop"`.
        resource: String,
        context: String,
        message: String,
    },
    #[error(
        "the API server does not serve {resource} (the server at {server} answered 404 to `{verb}`): \
         install latchkey's CRDs (`kubectl apply -f crds/` or the Helm chart), or use another --context"
    )]
    NotInstalled {
        verb: &'static str,
        resource: String,
        server: String,
    },
    #[error("{kind} {name:?} not found in namespace {namespace:?}; {hint}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
        hint: String,
    },
    #[error(
        "context {context:?} is not in the kubeconfig {kubeconfig} (its contexts: {known}); pass --context with one of them"
    )]
    UnknownContext {
        context: String,
        kubeconfig: String,
        known: String,
    },
    #[error("the API server refused to {verb} {resource}: {message}")]
    Api {
        verb: &'static str,
        resource: String,
        message: String,
    },
    #[error(
        "timed out after {after} waiting for ApiKey {namespace}/{name} to deliver the key asked for with \
         latchkey.dev/rotate={request:?}; is a latchkey controller watching namespace {namespace}? \
         (`kubectl latchkey status {name} -n {namespace}` shows its Ready reason)"
    )]
    RotateTimeout {
        namespace: String,
        name: String,
        request: String,
        after: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Input(String),
    #[error("the token request to {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("the latchkey server at {url} refused the token request ({status}): {error}{description}")]
    TokenRefused {
        url: String,
        status: u16,
        error: String,
        description: String,
    },
}
