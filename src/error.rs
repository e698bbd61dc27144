//! Typed errors. Messages never contain a key, a Secret's data or a token.

/// Errors of the controller and the CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the {kind} has no {field}")]
    MissingObjectKey { kind: &'static str, field: &'static str },
    #[error("could not load the kubeconfig: {0}")]
    Kubeconfig(String),
    #[error(
        "the {kind} CRD is not installed or not served ({source}); install it with `latchkey crd | kubectl apply -f -`"
    )]
    CrdMissing {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("auth server: {0}")]
    Server(String),
    /// A TokenPolicy's signing key could not be generated or read.
    #[error("signing key: {0}")]
    SigningKey(String),
    /// The admission webhook's own error (`webhook::WebhookError`, converted
    /// there: the shared error type depends on no server module).
    #[error("admission webhook: {0}")]
    Webhook(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("leader election: {0}")]
    LeaderElection(String),
    /// A listener's certificate could not be made or read
    /// (`tls::TlsError`, boxed for the same reason as `Webhook`).
    #[error("TLS of the {listener} listener: {source}")]
    Tls {
        listener: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "latchkey may not {action} ({source}); give its ServiceAccount the chart's RBAC for this namespace, or watch another one"
    )]
    Forbidden {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The error of the first list of a kind at startup: missing RBAC is not a missing CRD.
    pub fn at_startup(kind: &'static str, action: &'static str, source: kube::Error) -> Self {
        match &source {
            kube::Error::Api(status) if status.code == 403 => Error::Forbidden { action, source },
            _ => Error::CrdMissing { kind, source },
        }
    }
}

impl Error {
    /// Every value [`metric_label`](Self::metric_label) gives (metrics
    /// create these series at start, so a dashboard sees zeros).
    pub const METRIC_LABELS: [&'static str; 9] = [
        "kube",
        "missing_object_key",
        "kubeconfig",
        "crd_missing",
        "server",
        "signing_key",
        "webhook",
        "leader_election",
        "forbidden",
    ];

    /// Whether the API server refused a write as `409 Conflict` (a
    /// `resourceVersion` precondition that no longer holds).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(status), .. } if status.code == 409)
    }

    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::MissingObjectKey { .. } => "missing_object_key",
            Error::Kubeconfig(_) => "kubeconfig",
            Error::CrdMissing { .. } => "crd_missing",
            Error::Server(_) => "server",
            Error::SigningKey(_) => "signing_key",
            Error::Webhook(_) => "webhook",
            Error::LeaderElection(_) => "leader_election",
            Error::Tls { .. } => "tls",
            Error::Forbidden { .. } => "forbidden",
        }
    }
}

/// Extension to attach what we were doing to a kube error.
pub trait KubeResultExt<T> {
    fn during(self, action: &'static str) -> Result<T>;
}

impl<T> KubeResultExt<T> for std::result::Result<T, kube::Error> {
    fn during(self, action: &'static str) -> Result<T> {
        self.map_err(|source| Error::Kube { action, source })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
