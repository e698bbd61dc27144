//! The command line: clap's types for every subcommand and flag, what each
//! flag turns into (the options of the controller, the server and the
//! webhook), and the dispatch. The top layer: `main.rs` only parses and calls
//! [`Cli::run`].

use crate::clock::SystemClock;
use crate::controller::{self, Context};
use crate::namespaces::WatchNamespaces;
use crate::{Error, crd, server, telemetry};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// latchkey: rotated API keys and short-lived tokens for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "latchkey", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (the files in crds/ are this output).
    Crd,
    /// Run the controller that turns ApiKeys into Secrets.
    Controller(ControllerArgs),
    /// Run the auth server (external auth, introspection, metrics).
    Serve(ServeArgs),
    /// Run the controller and the auth server in one process.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct KubeArgs {
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster service account.
    #[arg(long, env = "LATCHKEY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log one JSON object per line instead of plain text (filter with RUST_LOG).
    #[arg(long, env = "LATCHKEY_LOG_JSON")]
    log_json: bool,
    /// Watch ApiKeys and TokenPolicies in these namespaces only: one, or a
    /// comma-separated list (a,b,c: one watch each, one index). Default:
    /// every namespace.
    #[arg(long, env = "LATCHKEY_WATCH_NAMESPACE", value_name = "NS[,NS…]")]
    watch_namespace: Option<WatchNamespaces>,
    /// The URL clients reach the latchkey server at: default TokenPolicy
    /// issuers are `<URL>/issuers/<namespace>/<name>`. Default: http://
    /// (https:// with --http-tls) and the --http-addr (0.0.0.0 as
    /// 127.0.0.1), or http://127.0.0.1:8080 for `latchkey controller`.
    #[arg(long, env = "LATCHKEY_ISSUER_BASE_URL")]
    issuer_base_url: Option<String>,
}

impl KubeArgs {
    /// The watched namespaces (every one without --watch-namespace).
    fn namespaces(&self) -> WatchNamespaces {
        self.watch_namespace.clone().unwrap_or_default()
    }
}

#[derive(clap::Args, Debug)]
struct ControllerArgs {
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    reconcile: ReconcileArgs,
    /// Serve /livez, /readyz and /metrics on this address (for example
    /// 0.0.0.0:8080); none without it.
    #[arg(long, env = "LATCHKEY_HTTP_ADDR")]
    http_addr: Option<std::net::SocketAddr>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    webhook: WebhookArgs,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    reconcile: ReconcileArgs,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// The admission webhook (`/validate` over TLS); off without `--webhook-addr`.
#[derive(clap::Args, Debug)]
struct WebhookArgs {
    /// Serve the admission webhook over TLS on this address (for example 0.0.0.0:8443).
    #[arg(long, env = "LATCHKEY_WEBHOOK_ADDR")]
    webhook_addr: Option<std::net::SocketAddr>,
    /// Out of cluster: the URL the API server calls (https://HOST:PORT/validate);
    /// latchkey then creates the whole ValidatingWebhookConfiguration. Without
    /// it latchkey only writes its CA into the configuration's caBundle.
    #[arg(long, env = "LATCHKEY_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Name of the ValidatingWebhookConfiguration.
    #[arg(long, default_value = "latchkey")]
    webhook_configuration_name: String,
    /// The Secret NAMESPACE/NAME that holds the webhook's CA, shared by every
    /// replica. Default: $POD_NAMESPACE (or the kubeconfig's namespace)/latchkey-webhook-ca.
    #[arg(long, env = "LATCHKEY_WEBHOOK_CA_SECRET")]
    webhook_ca_secret: Option<String>,
    /// A DNS name (or IP) of the serving certificate, for example
    /// latchkey.latchkey-system.svc; repeatable. The --webhook-url host is added.
    #[arg(long)]
    webhook_dns_name: Vec<String>,
    /// A username that may change and delete latchkey's Secrets; repeatable.
    /// Default: latchkey's own username (a SelfSubjectReview at startup).
    #[arg(long)]
    webhook_allowed_user: Vec<String>,
    /// failurePolicy of a configuration latchkey creates (with --webhook-url).
    #[arg(long, default_value = "Fail", value_parser = ["Fail", "Ignore"])]
    webhook_failure_policy: String,
    /// timeoutSeconds of a configuration latchkey creates (with --webhook-url).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=30))]
    webhook_timeout_seconds: u8,
    /// Operations on latchkey's Secrets checked by a configuration latchkey creates.
    #[arg(long, default_value = "UPDATE,DELETE", value_delimiter = ',')]
    webhook_secret_operations: Vec<String>,
    /// cert-manager mode: serve the certificate mounted in this directory
    /// (tls.crt, tls.key; reloaded when it changes), keep no CA and leave
    /// caBundle to cert-manager's CA injector.
    #[arg(long, env = "LATCHKEY_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,
    /// Lifetime of the serving certificate (tests shorten it).
    #[arg(long, default_value_t = 30 * 24 * 3600, hide = true)]
    webhook_cert_validity_seconds: u64,
    /// Renew the serving certificate this long before it expires.
    #[arg(long, default_value_t = 10 * 24 * 3600, hide = true)]
    webhook_cert_renew_before_seconds: u64,
    /// How often the CA Secret and the configuration are checked.
    #[arg(long, default_value_t = 60, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    webhook_sync_seconds: u64,
}

impl WebhookArgs {
    /// The webhook's options, or `None` when it is off.
    fn options(
        &self,
        client: &kube::Client,
        namespaces: WatchNamespaces,
        require_grants: bool,
    ) -> Result<Option<crate::webhook::Options>, Error> {
        let Some(addr) = self.webhook_addr else {
            return Ok(None);
        };
        let ca_secret = self.ca_secret(client)?;
        Ok(Some(crate::webhook::Options {
            addr,
            url: self.webhook_url.clone(),
            configuration_name: self.webhook_configuration_name.clone(),
            ca_secret,
            dns_names: self.webhook_dns_name.clone(),
            allowed_users: self.webhook_allowed_user.clone(),
            namespaces,
            failure_policy: self.webhook_failure_policy.clone(),
            timeout_seconds: self.webhook_timeout_seconds,
            secret_operations: self.webhook_secret_operations.clone(),
            cert_validity: std::time::Duration::from_secs(self.webhook_cert_validity_seconds),
            renew_before: std::time::Duration::from_secs(self.webhook_cert_renew_before_seconds),
            sync_interval: std::time::Duration::from_secs(self.webhook_sync_seconds),
            inject_ca: self.webhook_cert_dir.is_none(),
            cert_dir: self.webhook_cert_dir.clone(),
            leading: None,
            require_grants,
        }))
    }
}

impl WebhookArgs {
    /// The CA Secret (NAMESPACE, NAME) every listener signing with
    /// latchkey's CA shares.
    fn ca_secret(&self, client: &kube::Client) -> Result<(String, String), Error> {
        match &self.webhook_ca_secret {
            Some(s) => match s.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    Ok((ns.to_owned(), name.to_owned()))
                }
                _ => Err(crate::webhook::WebhookError::Option(format!(
                    "--webhook-ca-secret must be NAMESPACE/NAME, not {s:?}"
                ))
                .into()),
            },
            None => Ok((
                std::env::var("POD_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_owned()),
                "latchkey-webhook-ca".to_owned(),
            )),
        }
    }
}

/// The webhook server, or nothing (pending forever) when it is off.
async fn run_webhook(client: kube::Client, options: Option<crate::webhook::Options>) -> Result<(), Error> {
    match options {
        Some(options) => Ok(crate::webhook::run(client, options, server::shutdown_signal()).await?),
        None => Ok(()),
    }
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Address of the HTTP(S) server (external auth, /token, /introspect, probes, /metrics).
    #[arg(long, env = "LATCHKEY_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: std::net::SocketAddr,
    #[command(flatten)]
    tls: crate::tls::args::ListenerTlsArgs,
    /// Serve Envoy's gRPC external authorization
    /// (envoy.service.auth.v3.Authorization/Check) on this address too,
    /// for example 0.0.0.0:9001. Off without it.
    #[arg(long, env = "LATCHKEY_GRPC_ADDR")]
    grpc_addr: Option<std::net::SocketAddr>,
    /// A header that carries the API key, besides `Authorization: Bearer` and `X-Api-Key`.
    #[arg(long, env = "LATCHKEY_API_KEY_HEADER")]
    api_key_header: Option<axum::http::HeaderName>,
    /// The longest a proxy may cache an allow (Cache-Control max-age); 0 = no-store.
    #[arg(long, default_value_t = 1)]
    decision_cache_seconds: u64,
    /// How often status.lastUsedAt is brought up to date.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    last_used_flush_seconds: u64,
    /// A token custom claim that gets a header of its own on every allow,
    /// `X-Auth-Claim-<NAME>` (empty when absent; repeatable). Every custom
    /// claim is in `X-Auth-Claims` (JSON) anyway; list the same names in
    /// the proxy's header list.
    #[arg(long = "claim-header", value_name = "NAME")]
    claim_headers: Vec<crate::server::decision::ClaimHeader>,
    /// The most memory the verified-token cache accounts for (bytes).
    #[arg(long, default_value_t = crate::server::token_cache::DEFAULT_CACHE_BYTES)]
    token_cache_bytes: usize,
    /// The most of it one client_id may hold (bytes); default an eighth of --token-cache-bytes.
    #[arg(long)]
    token_cache_client_bytes: Option<usize>,
    /// A connection must deliver a whole request head within this many seconds of its first byte.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_header_read_timeout_seconds: u64,
    /// A keep-alive connection without a request for this long is closed.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=86400))]
    http_idle_timeout_seconds: u64,
    /// Connections served at once; never more than the open-file limit allows (less a reserve).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    http_max_connections: u64,
    /// The largest body /token, <issuer>/token and /introspect accept (bytes).
    #[arg(long, default_value_t = crate::server::guard::MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Failed client authentications per source address per window before 429 (/token, /introspect; 0: off).
    #[arg(long, default_value_t = 20)]
    auth_failures_per_source: u32,
    /// Failed authentications per API key id per window before 429 (every route; 0: off).
    #[arg(long, default_value_t = 10)]
    auth_failures_per_key_id: u32,
    /// The window of the two limits above.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    auth_failure_window_seconds: u64,
    /// Strict mode: a namespace that no CredentialGrant selects may claim no
    /// scope, audience or custom subject (the server honours none, the
    /// webhook refuses them). Default: such a namespace is unrestricted.
    #[arg(long, env = "LATCHKEY_REQUIRE_GRANTS")]
    require_grants: bool,
    /// Share each ApiKey's spec.rateLimit with every replica through this
    /// Redis (redis://[:PASSWORD@]HOST:PORT[/DB]; no TLS). Off by default:
    /// each replica has its own bucket. Redis unreachable: per replica
    /// until it answers again.
    #[arg(long, env = "LATCHKEY_RATE_LIMIT_REDIS_URL", hide_env_values = true)]
    rate_limit_redis_url: Option<crate::server::redis_limit::RedisUrl>,
}

impl ServerArgs {
    /// `http://<http-addr>` (`https://` with --http-tls), with an
    /// unspecified address as loopback.
    fn default_base_url(&self) -> String {
        let mut addr = self.http_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if self.tls.http_tls == crate::tls::Mode::Off {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{addr}")
    }

    /// The HTTP listener's certificate source, or `None` for plain HTTP
    /// (see [`crate::tls::args`]).
    fn tls_source(
        &self,
        ca_secret: (String, String),
        base_url: &str,
    ) -> Result<Option<crate::tls::Source>, Error> {
        let source = self.tls.http_source(ca_secret, base_url);
        source.map_err(|e| Error::Tls {
            listener: "HTTP",
            source: Box::new(e),
        })
    }

    /// The gRPC listener's certificate source, or `None` for h2c.
    fn grpc_tls_source(&self, ca_secret: (String, String)) -> Result<Option<crate::tls::Source>, Error> {
        let source = self.tls.grpc_source(ca_secret, self.grpc_addr.is_some());
        source.map_err(|e| Error::Tls {
            listener: "gRPC",
            source: Box::new(e),
        })
    }

    fn options(
        &self,
        namespaces: WatchNamespaces,
        issuer_base_url: Option<String>,
    ) -> crate::server::Options {
        crate::server::Options {
            issuer_base_url: issuer_base_url.unwrap_or_else(|| self.default_base_url()),
            http_addr: self.http_addr,
            grpc_addr: self.grpc_addr,
            namespaces,
            api_key_header: self.api_key_header.clone(),
            decision_cache_seconds: self.decision_cache_seconds,
            last_used_flush: std::time::Duration::from_secs(self.last_used_flush_seconds),
            claim_headers: self.claim_headers.clone(),
            require_grants: self.require_grants,
            limits: self.limits(),
            tls: None,
            grpc_tls: None,
            rate_limit_redis: self.rate_limit_redis_url.clone(),
        }
    }

    fn limits(&self) -> crate::server::Limits {
        use crate::listener;
        let soft = listener::raise_open_files_limit();
        let requested = usize::try_from(self.http_max_connections).unwrap_or(usize::MAX);
        // With --grpc-addr, the HTTP and the gRPC listener each have this cap
        // and share the open files.
        let listeners = if self.grpc_addr.is_some() { 2 } else { 1 };
        let max_connections =
            listener::connection_cap_shared(requested, soft, crate::webhook::MAX_CONNECTIONS, listeners);
        if max_connections < requested {
            tracing::warn!(
                requested,
                max_connections,
                open_files = soft,
                "the open-file limit lowers the connection cap"
            );
        }
        let mut token_cache = crate::server::token_cache::Limits::new(self.token_cache_bytes);
        if let Some(per_client) = self.token_cache_client_bytes {
            token_cache.per_client_bytes = per_client;
        }
        let secs = std::time::Duration::from_secs;
        crate::server::Limits {
            hygiene: listener::Hygiene {
                header_read_timeout: secs(self.http_header_read_timeout_seconds),
                idle_timeout: secs(self.http_idle_timeout_seconds),
                max_connections,
            },
            max_body_bytes: self.max_body_bytes,
            throttle: crate::server::throttle::Config {
                per_source: self.auth_failures_per_source,
                per_key_id: self.auth_failures_per_key_id,
                window: secs(self.auth_failure_window_seconds),
            },
            token_cache,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ReconcileArgs {
    /// How many ApiKeys are reconciled at the same time.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Name of this instance in Events (for example the pod name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    #[command(flatten)]
    lease: LeaseArgs,
}

/// Leader election: of several controllers only the holder of a Lease reconciles.
#[derive(clap::Args, Debug)]
struct LeaseArgs {
    /// Reconcile without leader election (then run only one controller).
    #[arg(long, env = "LATCHKEY_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the leader-election Lease. Default: $POD_NAMESPACE, else
    /// the namespace of the kubeconfig's context (or of the service account).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the Lease. Default: `latchkey`, `latchkey-<NS>` with
    /// --watch-namespace NS, `latchkey-<A>.<B>…` (sorted) with a list.
    #[arg(long, env = "LATCHKEY_LEASE_NAME")]
    lease_name: Option<String>,
    /// This process' holder identity. Default: --instance (the pod name), or
    /// `latchkey`, plus a random suffix per start.
    #[arg(long)]
    lease_identity: Option<String>,
    /// How long a hold lasts without renewal; a standby takes over this long
    /// after a leader died at the latest.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_duration_seconds: u64,
    /// How long before expiry the leader renews; it stops reconciling half of
    /// this before expiry when renewals fail. Less than the duration.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3599))]
    lease_grace_seconds: u64,
}

impl LeaseArgs {
    fn config(
        &self,
        client: &kube::Client,
        namespaces: &WatchNamespaces,
        instance: Option<&str>,
    ) -> Option<controller::leader::LeaseConfig> {
        if self.no_leader_election {
            return None;
        }
        Some(controller::leader::LeaseConfig {
            namespace: self
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            name: self.lease_name.clone().unwrap_or_else(|| namespaces.lease_name()),
            identity: self
                .lease_identity
                .clone()
                .unwrap_or_else(|| controller::leader::default_identity(instance)),
            duration_seconds: self.lease_duration_seconds,
            grace_seconds: self.lease_grace_seconds,
        })
    }
}

impl Cli {
    /// Runs the subcommand until it ends (SIGTERM or SIGINT for the long-running ones).
    pub async fn run(self) -> Result<(), Error> {
        match self.command {
            Command::Crd => {
                print_crds();
                Ok(())
            }
            Command::Controller(args) => run_controller(args).await,
            Command::Serve(args) => run_server(args).await,
            Command::Run(args) => run_both(args).await,
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
    let client = crate::client::from_kubeconfig(args.kube.kubeconfig.as_deref()).await?;
    let namespaces = args.kube.namespaces();
    let base = args
        .kube
        .issuer_base_url
        .unwrap_or_else(|| controller::DEFAULT_ISSUER_BASE_URL.into());
    let (ctx, options) = args.reconcile.context(client, namespaces, base);
    let lease = args.reconcile.lease(&ctx.client, &options);
    let probes = async {
        match args.http_addr {
            Some(addr) => {
                controller::probes::serve(addr, ctx.metrics.clone(), server::shutdown_signal()).await
            }
            None => Ok(()),
        }
    };
    tokio::try_join!(
        controller::run(ctx.clone(), options, lease, Arc::default()),
        probes
    )?;
    Ok(())
}

/// What `serve` and `run` both start: the client, the auth server's and
/// the webhook's options.
struct Serving {
    client: kube::Client,
    server: server::Options,
    webhook: Option<crate::webhook::Options>,
}

impl Serving {
    async fn new(kube: &KubeArgs, server_args: &ServerArgs, webhook: &WebhookArgs) -> Result<Self, Error> {
        telemetry::init(kube.log_json);
        let client = crate::client::from_kubeconfig(kube.kubeconfig.as_deref()).await?;
        let webhook_options = webhook.options(&client, kube.namespaces(), server_args.require_grants)?;
        let mut server = server_args.options(kube.namespaces(), kube.issuer_base_url.clone());
        server.tls = server_args.tls_source(webhook.ca_secret(&client)?, &server.issuer_base_url)?;
        server.grpc_tls = server_args.grpc_tls_source(webhook.ca_secret(&client)?)?;
        let webhook = webhook_options;
        Ok(Self {
            client,
            server,
            webhook,
        })
    }

    /// The auth server and the webhook until SIGTERM/SIGINT; either failing
    /// stops both. `controller`: the metrics of the controller running in
    /// the same process, served on the auth server's `/metrics`.
    async fn run(self, controller: Option<Arc<controller::metrics::ControllerMetrics>>) -> Result<(), Error> {
        tokio::try_join!(
            server::run_with_metrics(
                self.client.clone(),
                Arc::new(SystemClock),
                self.server,
                server::shutdown_signal(),
                |registry| {
                    if let Some(m) = &controller {
                        m.register(registry);
                    }
                },
            ),
            run_webhook(self.client, self.webhook),
        )?;
        Ok(())
    }
}

async fn run_server(args: ServeArgs) -> Result<(), Error> {
    Serving::new(&args.kube, &args.server, &args.webhook)
        .await?
        .run(None)
        .await
}

async fn run_both(args: RunArgs) -> Result<(), Error> {
    let mut serving = Serving::new(&args.kube, &args.server, &args.webhook).await?;
    let (ctx, controller_options) = args.reconcile.context(
        serving.client.clone(),
        args.kube.namespaces(),
        serving.server.issuer_base_url.clone(),
    );
    let lease = args.reconcile.lease(&ctx.client, &controller_options);
    // Only the leader writes the webhook configuration's caBundle.
    // The sync loop writes it at once when this replica takes the Lease.
    let (leading, leading_rx) = tokio::sync::watch::channel(false);
    let leading = Arc::new(leading);
    serving.webhook = serving.webhook.map(|w| crate::webhook::Options {
        leading: Some(leading_rx),
        ..w
    });
    // Both stop on SIGTERM/SIGINT; either failing stops the process. The
    // server serves on every replica, the controllers run on the leader.
    let metrics = ctx.metrics.clone();
    tokio::try_join!(
        controller::run(ctx, controller_options, lease, leading),
        serving.run(Some(metrics)),
    )?;
    Ok(())
}

impl ReconcileArgs {
    fn lease(
        &self,
        client: &kube::Client,
        options: &controller::Options,
    ) -> Option<controller::leader::LeaseConfig> {
        self.lease
            .config(client, &options.namespaces, self.instance.as_deref())
    }

    fn context(
        &self,
        client: kube::Client,
        namespaces: WatchNamespaces,
        issuer_base_url: String,
    ) -> (Arc<Context>, controller::Options) {
        let ctx = Arc::new(
            Context::new(client, Arc::new(SystemClock), self.instance.clone())
                .with_issuer_base_url(issuer_base_url),
        );
        let options = controller::Options {
            namespaces,
            concurrency: self.concurrency,
        };
        (ctx, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_flags_of_controller_serve_and_webhook() {
        let cli = Cli::try_parse_from([
            "latchkey",
            "run",
            "--http-addr",
            "127.0.0.1:9000",
            "--watch-namespace",
            "team-a",
            "--webhook-addr",
            "127.0.0.1:9443",
            "--no-leader-election",
            "--concurrency",
            "4",
            "--grpc-addr",
            "127.0.0.1:9001",
        ])
        .expect("valid flags");
        let Command::Run(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        assert_eq!(args.server.default_base_url(), "http://127.0.0.1:9000");
        let options = args.server.options(args.kube.namespaces(), None);
        assert_eq!(options.namespaces, "team-a".parse().unwrap());
        assert_eq!(options.issuer_base_url, "http://127.0.0.1:9000");
        assert_eq!(options.grpc_addr, Some("127.0.0.1:9001".parse().unwrap()));
        assert!(args.reconcile.lease.no_leader_election);
        assert_eq!(args.reconcile.concurrency, 4);
    }

    fn controller_args(argv: &[&str]) -> Result<ControllerArgs, clap::Error> {
        let mut all = vec!["latchkey", "controller"];
        all.extend_from_slice(argv);
        match Cli::try_parse_from(all)?.command {
            Command::Controller(args) => Ok(args),
            _ => panic!("parsed as another subcommand"),
        }
    }

    #[test]
    fn watch_namespace_takes_one_namespace_or_a_comma_separated_list() {
        let all = controller_args(&[]).unwrap();
        assert_eq!(all.kube.namespaces(), WatchNamespaces::All);
        let one = controller_args(&["--watch-namespace", "team-a"]).unwrap();
        assert_eq!(one.kube.namespaces().names().unwrap(), ["team-a"]);
        let list = controller_args(&["--watch-namespace", "a,b,c"]).unwrap();
        assert_eq!(list.kube.namespaces().names().unwrap(), ["a", "b", "c"]);
        let spaced = controller_args(&["--watch-namespace=a, b"]).unwrap();
        assert_eq!(spaced.kube.namespaces().names().unwrap(), ["a", "b"]);
        // The default Lease: as before for all and one, sorted names for a list.
        let lease = |args: &ControllerArgs| {
            args.reconcile
                .lease
                .lease_name
                .clone()
                .unwrap_or_else(|| args.kube.namespaces().lease_name())
        };
        assert_eq!(lease(&all), "latchkey");
        assert_eq!(lease(&one), "latchkey-team-a");
        assert_eq!(
            lease(&controller_args(&["--watch-namespace", "c,a,b"]).unwrap()),
            "latchkey-a.b.c"
        );
    }

    #[test]
    fn a_bad_namespace_list_is_refused_naming_the_flag_and_what_to_change() {
        for (value, says) in [
            ("", "leave --watch-namespace"),
            ("a,,b", "remove the extra comma"),
            ("a,", "remove the extra comma"),
            ("a,b,a", "listed twice"),
            ("a,Team-B", "not a namespace name"),
            ("a,b_c", "not a namespace name"),
        ] {
            let err = controller_args(&["--watch-namespace", value])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--watch-namespace"), "{value:?}: {err}");
            assert!(err.contains(says), "{value:?}: {err}");
        }
    }

    #[test]
    fn an_unspecified_listen_address_becomes_loopback_in_the_default_issuer() {
        let cli = Cli::try_parse_from(["latchkey", "serve", "--http-addr", "0.0.0.0:8080"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        assert_eq!(args.server.default_base_url(), "http://127.0.0.1:8080");
        assert_eq!(
            args.server.options(WatchNamespaces::All, None).grpc_addr,
            None,
            "gRPC is off by default"
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let err =
            Cli::try_parse_from(["latchkey", "controller", "--lease-duration-seconds", "1"]).unwrap_err();
        assert!(err.to_string().contains("--lease-duration-seconds"), "{err}");
        let err =
            Cli::try_parse_from(["latchkey", "serve", "--webhook-failure-policy", "Maybe"]).unwrap_err();
        assert!(err.to_string().contains("--webhook-failure-policy"), "{err}");
        let err = Cli::try_parse_from(["latchkey", "serve", "--claim-header", "no spaces"]).unwrap_err();
        assert!(err.to_string().contains("--claim-header"), "{err}");
    }

    fn serve_args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["latchkey", "serve", "--http-addr", "0.0.0.0:8443"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Serve(args) => args,
            _ => panic!("parsed as another subcommand"),
        }
    }

    #[test]
    fn https_changes_the_default_issuer_scheme_and_plain_http_stays_the_default() {
        let ca = || ("latchkey-system".to_owned(), "latchkey-webhook-ca".to_owned());
        let plain = serve_args(&[]);
        assert_eq!(plain.server.default_base_url(), "http://127.0.0.1:8443");
        assert_eq!(plain.server.tls_source(ca(), "http://x").unwrap(), None);
        let tls = serve_args(&[
            "--http-tls",
            "self-signed",
            "--http-tls-dns-name",
            "latchkey.latchkey-system.svc",
        ]);
        let base = tls.server.default_base_url();
        assert_eq!(base, "https://127.0.0.1:8443");
        let Some(crate::tls::Source::Signed { ca_secret, names, .. }) =
            tls.server.tls_source(ca(), &base).unwrap()
        else {
            panic!("self-signed is latchkey's CA");
        };
        assert_eq!(ca_secret, ca(), "the webhook's CA Secret");
        assert_eq!(names, ["latchkey.latchkey-system.svc", "127.0.0.1"]);
    }

    #[test]
    fn a_cert_dir_goes_with_dir_mode_only() {
        let ca = || ("ns".to_owned(), "ca".to_owned());
        let dir = serve_args(&["--http-tls", "dir", "--http-tls-cert-dir", "/certs"]);
        assert!(matches!(
            dir.server.tls_source(ca(), "https://x").unwrap(),
            Some(crate::tls::Source::Mounted { .. })
        ));
        let err = serve_args(&["--http-tls", "dir"])
            .server
            .tls_source(ca(), "https://x")
            .unwrap_err();
        assert!(err.to_string().contains("--http-tls-cert-dir"), "{err}");
        let err = serve_args(&["--http-tls-cert-dir", "/certs"])
            .server
            .tls_source(ca(), "http://x")
            .unwrap_err();
        assert!(err.to_string().contains("--http-tls dir"), "{err}");
        let err = Cli::try_parse_from(["latchkey", "serve", "--http-tls", "maybe"]).unwrap_err();
        assert!(err.to_string().contains("--http-tls"), "{err}");
    }

    #[test]
    fn grpc_tls_mirrors_http_tls_and_needs_the_grpc_address() {
        let ca = || ("ns".to_owned(), "ca".to_owned());
        let h2c = serve_args(&["--grpc-addr", "127.0.0.1:9001"]);
        assert_eq!(h2c.server.grpc_tls_source(ca()).unwrap(), None, "h2c by default");
        let signed = serve_args(&[
            "--grpc-addr",
            "127.0.0.1:9001",
            "--grpc-tls",
            "self-signed",
            "--http-tls-dns-name",
            "latchkey.ns.svc",
        ]);
        let Some(crate::tls::Source::Signed { ca_secret, names, .. }) =
            signed.server.grpc_tls_source(ca()).unwrap()
        else {
            panic!("self-signed is latchkey's CA");
        };
        assert_eq!(ca_secret, ca(), "the CA Secret the HTTP listener uses");
        assert_eq!(names, ["latchkey.ns.svc"], "the HTTP listener's names by default");
        let own = serve_args(&[
            "--grpc-addr",
            "127.0.0.1:9001",
            "--grpc-tls",
            "self-signed",
            "--grpc-tls-dns-name",
            "grpc.example",
        ]);
        let Some(crate::tls::Source::Signed { names, .. }) = own.server.grpc_tls_source(ca()).unwrap() else {
            panic!("self-signed");
        };
        assert_eq!(names, ["grpc.example"]);
        let dir = serve_args(&["--grpc-addr", "127.0.0.1:9001", "--grpc-tls", "dir"]);
        let err = dir.server.grpc_tls_source(ca()).unwrap_err();
        assert!(err.to_string().contains("--grpc-tls-cert-dir"), "{err}");
        let err = serve_args(&["--grpc-tls", "self-signed"])
            .server
            .grpc_tls_source(ca())
            .unwrap_err();
        assert!(err.to_string().contains("--grpc-addr"), "{err}");
    }

    #[test]
    fn claim_headers_are_repeatable() {
        let cli = Cli::try_parse_from([
            "latchkey",
            "serve",
            "--claim-header",
            "tenant",
            "--claim-header",
            "region",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("parsed as another subcommand");
        };
        let options = args.server.options(WatchNamespaces::All, None);
        let headers: Vec<&str> = options.claim_headers.iter().map(|c| c.header.as_str()).collect();
        assert_eq!(headers, ["x-auth-claim-tenant", "x-auth-claim-region"]);
    }
}
