//! Which namespaces latchkey watches: every one (no `--watch-namespace`),
//! one, or a list (`--watch-namespace a,b,c`), and the watch streams of a
//! kind over them, for the controller, the auth server's index and the
//! webhook's lookups alike.
//!
//! The API server has no "list these namespaces" request: a watch covers
//! one namespace or all. A list therefore gets **one watch per namespace**
//! (only that namespace's Role is needed, never a ClusterRole), merged into
//! one stream ([`merge`]) that behaves exactly like a single watcher's:
//! one `Init`, the objects of every namespace, one `InitDone` once every
//! namespace has been listed, then changes. Every consumer (kube-runtime's
//! reflector and `Controller`, the auth server's index, its TokenPolicy
//! snapshot) stays as it is and keeps **one** store or index.
//!
//! Why not the alternatives kube-rs offers:
//! - one reflector per namespace writing into one store: a re-list of one
//!   namespace (`Init` … `InitDone`) replaces the *whole* store with that
//!   namespace's objects (kube-runtime's `Writer` swaps its buffer in at
//!   `InitDone`; kube-state-metrics #942 is the same bug with client-go);
//! - one `Controller` per namespace, joined: N stores, N concurrency
//!   budgets, and the auth server's index and the TokenPolicy issuer check
//!   (issuer paths are unique across namespaces) would still need a merged
//!   view; the merged stream gives `Controller::for_stream`,
//!   `owns_stream` and `watches_stream` one input each instead.
//!
//! The price of a list: the merge keeps a copy of each watched object (the
//! owned Secrets' and ConfigMaps' metadata only) so that a re-list of one
//! namespace can say which of its objects went away (a `Delete` carries the
//! object). A single namespace or all of them use the plain watcher, as
//! before, and keep nothing extra.

pub mod merge;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt;
use std::str::FromStr;

/// The longest Lease name (a DNS subdomain).
const MAX_LEASE_NAME: usize = 253;

/// The namespaces latchkey watches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WatchNamespaces {
    /// Every namespace (no `--watch-namespace`): cluster-wide watches.
    #[default]
    All,
    /// These namespaces, at least one, each once, in the order given.
    Only(Vec<String>),
}

/// Why a `--watch-namespace` value is refused (clap prefixes the flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceListError {
    #[error(
        "no namespace given; leave --watch-namespace (and LATCHKEY_WATCH_NAMESPACE) out to watch every namespace, or list namespaces separated by commas: a,b,c"
    )]
    Empty,
    #[error("namespace {position} of {list:?} is empty; remove the extra comma")]
    EmptyName { list: String, position: usize },
    #[error("{name:?} is listed twice; list each namespace once")]
    Duplicate { name: String },
    #[error(
        "{name:?} is not a namespace name: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit (names are separated by commas)"
    )]
    Invalid { name: String },
}

/// Whether `name` is an RFC 1123 label (what a namespace name must be).
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

impl FromStr for WatchNamespaces {
    type Err = NamespaceListError;

    /// `a`, or `a,b,c` (spaces around a name are ignored). Empty names,
    /// duplicates and names that are not DNS labels are refused.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        if list.trim().is_empty() {
            return Err(NamespaceListError::Empty);
        }
        let mut names: Vec<String> = Vec::new();
        for (i, name) in list.split(',').map(str::trim).enumerate() {
            if name.is_empty() {
                return Err(NamespaceListError::EmptyName {
                    list: list.to_owned(),
                    position: i + 1,
                });
            }
            if !is_dns_label(name) {
                return Err(NamespaceListError::Invalid {
                    name: name.to_owned(),
                });
            }
            if names.iter().any(|n| n == name) {
                return Err(NamespaceListError::Duplicate {
                    name: name.to_owned(),
                });
            }
            names.push(name.to_owned());
        }
        Ok(Self::Only(names))
    }
}

impl fmt::Display for WatchNamespaces {
    /// `*` for every namespace, else the list as given (`a,b,c`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Only(names) => f.write_str(&names.join(",")),
        }
    }
}

impl WatchNamespaces {
    /// The listed namespaces, or `None` for every namespace.
    pub fn names(&self) -> Option<&[String]> {
        match self {
            Self::All => None,
            Self::Only(names) => Some(names),
        }
    }

    /// Whether objects of `namespace` are watched.
    pub fn contains(&self, namespace: &str) -> bool {
        self.names()
            .is_none_or(|names| names.iter().any(|n| n == namespace))
    }

    /// The default leader-election Lease name: `latchkey` for every
    /// namespace, `latchkey-<ns>` for one (as before lists existed), and for
    /// a list `latchkey-<a>.<b>.<c>` with the names sorted (the same set in
    /// another order elects on the same Lease), or, when that is longer
    /// than a Lease name may be, `latchkey-ns-<first 16 hex digits of the
    /// SHA-256 of the sorted list>`.
    pub fn lease_name(&self) -> String {
        let Some(names) = self.names() else {
            return "latchkey".into();
        };
        let mut sorted = names.to_vec();
        sorted.sort();
        let joined = sorted.join(".");
        let name = format!("latchkey-{joined}");
        if name.len() <= MAX_LEASE_NAME {
            return name;
        }
        let digest = crate::key::sha256_hex(joined.as_bytes());
        format!("latchkey-ns-{}", &digest[..16])
    }

    /// One `Api` per watched namespace, or one over all of them.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match self.names() {
            None => vec![Api::all(client.clone())],
            Some(names) => names
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }

    /// The events of kind `K` in the watched namespaces, as one watcher's
    /// (see the module documentation); each namespace's watch retries with
    /// kube-runtime's default backoff on its own, so a failing namespace
    /// does not hold up the others.
    pub fn watch<K>(
        &self,
        client: &Client,
        config: watcher::Config,
    ) -> futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + fmt::Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let streams = self
            .apis::<K>(client)
            .into_iter()
            .map(|api| watcher(api, config.clone()).default_backoff().boxed());
        merged(streams.collect())
    }

    /// [`watch`](Self::watch) of the metadata only
    /// (`PartialObjectMeta<K>`: no Secret data in memory).
    pub fn watch_metadata<K>(
        &self,
        client: &Client,
        config: watcher::Config,
    ) -> futures::stream::BoxStream<
        'static,
        Result<watcher::Event<kube::core::PartialObjectMeta<K>>, watcher::Error>,
    >
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + fmt::Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        self.watch::<kube::core::PartialObjectMeta<K>>(client, config)
    }
}

/// One stream as is; several merged by [`merge::Merge`].
fn merged<K>(
    mut streams: Vec<futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>>,
) -> futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + Send + 'static,
{
    if streams.len() == 1 {
        return streams.remove(0);
    }
    let mut state = merge::Merge::new(streams.len());
    let tagged = futures::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |event| (i, event))),
    );
    tagged
        .flat_map(move |(i, event)| {
            let out: Vec<Result<watcher::Event<K>, watcher::Error>> = match event {
                Ok(event) => state.on_event(i, event).into_iter().map(Ok).collect(),
                Err(err) => vec![Err(err)],
            };
            futures::stream::iter(out)
        })
        .boxed()
}

#[cfg(test)]
mod tests;
