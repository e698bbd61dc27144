//! The Helm chart `charts/latchkey`, checked with a real helm
//! (`e2e/cluster helm`, built from `helm.sh/helm/v3`) and installed into the
//! local control plane:
//!
//! - its CRDs are byte for byte the files of `crds/` (`e2e/chart-crds` copies them);
//! - `helm lint --strict` passes for the default values and the variants;
//! - `helm template` renders what the values ask for (CRDs, RBAC, webhook,
//!   Deployment, NetworkPolicy, namespaced mode) and refuses what latchkey
//!   cannot do;
//! - `helm install` creates the objects, and `kubectl auth can-i --as` the
//!   ServiceAccount shows exactly the intended rights, cluster-wide and after
//!   `helm upgrade` to one watched namespace; `latchkey run` as that
//!   ServiceAccount (a token of it) does its work with them and is never
//!   forbidden; `helm uninstall` removes the release and keeps the CRDs.
//!
//! There are no nodes, so the chart's pods never run: latchkey runs as a
//! process next to the control plane under the chart's identity.
//! helm or the cluster missing is a failure, never a skip.
//!
//! One file per job under tests/chart/ (this file is the root, so the
//! binary keeps its name `chart`): running helm and reading its output
//! (helm.rs), the chart's files (files.rs), lint and template (render.rs),
//! rights (rbac.rs), install (install.rs), a list of watched namespaces
//! (namespaces.rs), HTTPS on the HTTP port (tls.rs).

mod common;

#[path = "chart/files.rs"]
mod files;
#[path = "chart/helm.rs"]
mod helm;
#[path = "chart/install.rs"]
mod install;
#[path = "chart/namespaces.rs"]
mod namespaces;
#[path = "chart/rbac.rs"]
mod rbac;
#[path = "chart/render.rs"]
mod render;
#[path = "chart/tls.rs"]
mod tls;
