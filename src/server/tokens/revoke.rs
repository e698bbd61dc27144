//! `POST /revoke` (RFC 7009, and `<issuer>/revoke`): a client revokes a
//! token it minted, which revokes the token's whole session (`sid`), so a
//! refresh cannot bring it back. The matching is the pure
//! [`crate::token::revocation`]; this file holds the handler, the write to
//! status and the pruning.
//!
//! Where revocations live: in the TokenPolicy's own status,
//! `status.revokedSessions` (`sid` → Unix seconds until which no token of
//! the session can be valid), so they survive every restart and reach every
//! replica through the TokenPolicy watch it already runs (no database, no
//! new resource kind, no new RBAC but `patch` on `tokenpolicies/status`,
//! which the server already needs for nothing else and the chart grants).
//!
//! How it is written: a JSON merge patch on the status subresource that
//! carries the `metadata.resourceVersion` it was computed from (an
//! optimistic lock), field manager `latchkey`, operation Update — the same
//! as usage in ApiKey status ([`crate::server::usage`]). Not Server-Side
//! Apply: two replicas revoke concurrently, and an apply with the one field
//! manager lists the whole map it owns, so each replica's apply would
//! remove the other's entries it did not know of. A merge patch only names
//! the entries it adds (and the expired ones it removes, with `null`);
//! the resourceVersion makes the bound and the pruning decisions of a
//! replica whose view is stale fail with `409 Conflict`, after which it
//! reads the policy again and retries. The controller's apply of status
//! never lists this field ([`crate::crd::TokenPolicyStatus::without_server_fields`]),
//! so it neither owns nor removes it.
//!
//! Effect: at once on the replica that answered (its own set, before the
//! watch brings the write back), and on the others when their TokenPolicy
//! watch delivers the write (well under a second on a healthy API server).
//! Expired entries are removed on every write and by [`prune_loop`].

use super::*;
use crate::token::revocation::{self, MAX_REVOKED_SESSIONS, Revoked, StoreFull, TokenRef};
use kube::api::{Patch, PatchParams};
use std::sync::RwLockReadGuard;
use std::time::Duration;

/// How many times a write is retried after a `409 Conflict`.
const WRITE_ATTEMPTS: usize = 8;
/// How often every replica removes expired entries from status.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Whether `claims` is revoked under `policy` or by this replica.
pub(super) fn revoked_in(
    policy: &PolicyEntry,
    here: &HashMap<String, i64>,
    claims: &AccessClaims,
) -> Option<Revoked> {
    policy.revocations.check(TokenRef::of(claims)).or_else(|| {
        claims
            .sid
            .as_deref()
            .filter(|sid| here.contains_key(*sid))
            .map(|_| Revoked::Session)
    })
}

impl Tokens {
    /// Where `/revoke` writes (the server's client).
    pub fn set_store(&self, client: kube::Client) {
        let _ = self.store.set(client);
    }

    pub(super) fn revoked_here(&self) -> RwLockReadGuard<'_, HashMap<String, i64>> {
        self.revoked_here.read().expect("revocation lock")
    }

    /// Whether (why) a verified token of `policy` is revoked.
    pub fn revoked(&self, policy: Option<&PolicyEntry>, claims: &AccessClaims) -> Option<Revoked> {
        let here = self.revoked_here();
        match policy {
            Some(p) => revoked_in(p, &here, claims),
            None => None,
        }
    }

    /// Records a session revoked through this replica.
    pub fn remember(&self, sid: &str, until: i64) {
        self.revoked_here
            .write()
            .expect("revocation lock")
            .insert(sid.to_owned(), until);
    }

    /// Forgets this replica's revocations that have expired.
    pub fn forget_expired(&self, now: i64) {
        let mut here = self.revoked_here.write().expect("revocation lock");
        here.retain(|_, until| *until >= now);
    }
}

/// Why a revocation was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Full(#[from] StoreFull),
    #[error("the TokenPolicy changed {WRITE_ATTEMPTS} times while the revocation was written; retry")]
    Contended,
    #[error("the revocation could not be written to the TokenPolicy's status: {0}")]
    Api(#[from] kube::Error),
    #[error("this server does not write revocations (no Kubernetes client)")]
    NoStore,
}

/// Adds `sid` (kept until `until`) to the status of `policy`, pruning what
/// expired at `now`, starting from the watched view (`stored`, read at
/// `resource_version`) and re-reading the policy after a conflict.
pub async fn store(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    view: (BTreeMap<String, i64>, Option<String>),
    add: Option<(&str, i64)>,
    now: i64,
) -> Result<(), StoreError> {
    let api: Api<TokenPolicy> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(crate::meta::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let (mut stored, mut version) = view;
    for attempt in 0..WRITE_ATTEMPTS {
        if attempt > 0 {
            let fresh = api.get(name).await?;
            version = fresh.metadata.resource_version.clone();
            stored = fresh.status.map(|s| s.revoked_sessions).unwrap_or_default();
        }
        let Some(sessions) = revocation::write(&stored, add, now, MAX_REVOKED_SESSIONS)? else {
            return Ok(());
        };
        let body = json!({
            "metadata": {"resourceVersion": version},
            "status": {"revokedSessions": sessions},
        });
        match api.patch_status(name, &params, &Patch::Merge(&body)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Contended)
}

/// The parameters of a revocation request.
fn parse(body: &[u8]) -> Result<String, TokenError> {
    let mut token = None;
    let mut hint = None;
    for (name, value) in form_urlencoded::parse(body) {
        let slot = match &*name {
            "token" => &mut token,
            "token_type_hint" => &mut hint,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(TokenError::InvalidRequest(format!(
                "parameter {name} appears more than once"
            )));
        }
    }
    // RFC 7009 §2.1: the hint only speeds up the lookup; every token latchkey
    // issues is an access token, so any hint is searched the same way.
    token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::InvalidRequest("send the token to revoke as token=<token>".into()))
}

/// What a revocation request does; `Ok` is `200` whether or not anything
/// was revoked (RFC 7009 §2.2: also for an unknown, invalid or expired
/// token, and — latchkey's choice — for a token of another client, so the
/// answer never says whether a token exists or whose it is).
async fn revoke_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    fixed: Option<Arc<PolicyEntry>>,
) -> Result<(), TokenError> {
    if !crate::server::introspect::is_form(headers) {
        return Err(TokenError::InvalidRequest(
            "send the request as application/x-www-form-urlencoded".into(),
        ));
    }
    let presented = issue::client_key(headers, body)?.ok_or_else(|| {
        TokenError::InvalidClient(
            "authenticate with the API key that minted the token, as HTTP Basic password or Bearer token"
                .into(),
        )
    })?;
    let token = parse(body)?;
    if !state.index.is_synced() || !state.tokens.is_synced() {
        return Err(TokenError::TemporarilyUnavailable(
            "the server is still loading".into(),
        ));
    }
    let now = state.clock.now();
    let now_s = now.as_second();
    let (entry, _) = decision::verify(&presented, &state.index, now)
        .map_err(|_| TokenError::InvalidClient("the API key is unknown, revoked or expired".into()))?;
    let owner = &entry.owner;
    decision::use_key(&owner.usage, &entry.counters, now).map_err(|l| TokenError::RateLimited {
        retry_after: l.retry_after,
        limit: l.limit,
    })?;
    let snapshot = state.tokens.snapshot();
    // Invalid, expired, or signed by no published key: nothing to revoke.
    let Ok((claims, kid)) = claims::verify(&token, |kid| snapshot.by_kid.get(kid), now_s) else {
        return Ok(());
    };
    let (Some(policy), Some(key)) = (snapshot.policy_by_kid.get(&kid), snapshot.by_kid.get(&kid)) else {
        return Ok(());
    };
    if fixed.is_some_and(|f| f.namespace != policy.namespace || f.name != policy.name) {
        return Ok(());
    }
    // Minted by a key of the caller's ApiKey (any of its keys, as for a
    // refresh); a key no longer valid has already killed its tokens.
    let ours = KeyId::try_from(claims.client_id.as_bytes())
        .ok()
        .and_then(|id| {
            state.index.find_valid_with(&id, now, |e| {
                e.owner.namespace() == owner.namespace() && e.owner.name() == owner.name()
            })
        })
        .unwrap_or(false);
    let Some(sid) = claims.sid.as_deref().filter(|_| ours) else {
        return Ok(());
    };
    if revoked_in(policy, &state.tokens.revoked_here(), &claims) == Some(Revoked::Session) {
        return Ok(());
    }
    let began = claims.auth_time.unwrap_or(claims.iat);
    let until = revocation::keep_until(
        began,
        policy.session.session_max_age_seconds,
        key.max_ttl_seconds.max(policy.rules.max_ttl_seconds),
        now_s,
    );
    let client = state.tokens.store.get().ok_or(StoreError::NoStore);
    let written = match client {
        Ok(client) => {
            let view = (policy.stored_revocations.clone(), policy.resource_version.clone());
            store(
                client,
                &policy.namespace,
                &policy.name,
                view,
                Some((sid, until)),
                now_s,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match written {
        Ok(()) => {
            state.tokens.remember(sid, until);
            tracing::info!(namespace = %policy.namespace, policy = %policy.name, client_id = %claims.client_id, "revoked a session");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(namespace = %policy.namespace, policy = %policy.name, error = %e, "could not revoke a session");
            Err(TokenError::TemporarilyUnavailable(e.to_string()))
        }
    }
}

pub(super) async fn revoke_response(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    fixed: Option<Arc<PolicyEntry>>,
) -> Response {
    match revoke_inner(state, headers, body, fixed).await {
        Ok(()) => {
            let mut resp = StatusCode::OK.into_response();
            let headers = resp.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(err) => token_error(&err),
    }
}

/// `POST /revoke`.
pub async fn revoke(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    revoke_response(&state, &headers, &body, None).await
}

/// Every [`PRUNE_EVERY`], removes from each policy's status the revoked
/// sessions that have expired (and forgets this replica's own). Both
/// replicas may do it; the resourceVersion makes the loser of a race retry
/// from the winner's result, which usually has nothing left to prune.
pub async fn prune_loop(tokens: Arc<Tokens>, clock: Arc<dyn crate::clock::Clock>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.now().as_second();
        tokens.forget_expired(now);
        let Some(client) = tokens.store.get() else {
            continue;
        };
        let snapshot = tokens.snapshot();
        for policy in snapshot.by_name.values() {
            if !policy.stored_revocations.values().any(|until| *until < now) {
                continue;
            }
            let view = (policy.stored_revocations.clone(), policy.resource_version.clone());
            if let Err(e) = store(client, &policy.namespace, &policy.name, view, None, now).await {
                tracing::warn!(namespace = %policy.namespace, policy = %policy.name, error = %e, "could not prune revoked sessions");
            }
        }
    }
}
