//! A presented JWT: verified once against the published keys, then cached (bounded in bytes); the external-auth decision and the introspection answer for it.

use super::*;
use crate::token::permissions::AuthorizationDetail;

impl Tokens {
    /// Token state whose verified-token cache holds at most `limits`.
    pub fn with_cache(limits: token_cache::Limits) -> Self {
        Tokens {
            snapshot: RwLock::default(),
            version: AtomicU64::new(0),
            cache: ByteCache::new(limits),
            synced: AtomicBool::new(false),
            revoked_here: RwLock::default(),
            store: std::sync::OnceLock::new(),
            external: Default::default(),
        }
    }

    /// The verified-token cache (sizes and counters, the sweeper).
    pub fn cache(&self) -> &ByteCache<Option<KeyId>, CachedToken> {
        &self.cache
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn replace(&self, snapshot: Snapshot) {
        *self.snapshot.write().expect("token snapshot lock") = Arc::new(snapshot);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("token snapshot lock").clone()
    }

    /// The policy whose issuer URL has this path.
    pub fn by_issuer_path(&self, path: &str) -> Option<Arc<PolicyEntry>> {
        self.snapshot
            .read()
            .expect("token snapshot lock")
            .by_issuer_path
            .get(path)
            .cloned()
    }

    /// Whether the API key `client_id` is one the policy of `kid` admits
    /// (the index says whether it is still valid).
    pub fn client_admitted(&self, kid: &str, client_id: &KeyId, index: &Index, now: Timestamp) -> bool {
        let snapshot = self.snapshot.read().expect("token snapshot lock");
        snapshot
            .policy_by_kid
            .get(kid)
            .is_some_and(|policy| index.key_id_valid_where(client_id, now, |owner| policy.admits(owner)))
    }

    /// Verifies `token` (from the cache when seen before) and runs `f` on it
    /// (under the cache shard's read lock when cached).
    ///
    /// The cache is keyed by the SHA-256 of the token's signature, not of
    /// the whole token: a user's token is about 700 bytes, its ES256
    /// signature 86, and hashing the whole token was the largest single
    /// cost of a repeated token's request (0.4 µs, perf on `e2e/bench-auth
    /// tokens`). Sound because a hit answers with the *cached* claims only,
    /// never with anything read from the presented header or payload: a
    /// token that carries the signature of a verified token but other
    /// claims is answered as that verified token, which whoever holds its
    /// signature holds in full (the signature is the token's last part; a
    /// signature, ours ES256, EdDSA or RS256, is never empty, and a forged
    /// payload under it gains nothing). Claims never reach a decision
    /// unverified.
    pub fn with_verified<R>(
        &self,
        token: &str,
        now: i64,
        f: impl FnOnce(&CachedToken) -> R,
    ) -> Result<R, claims::TokenInvalid> {
        let Some(hash) = cache_key(token) else {
            // Nothing to key by (never a verified token's shape).
            let version = self.version.load(Ordering::Acquire);
            let snapshot = self.snapshot();
            let (claims, kid) = claims::verify(token, |kid| snapshot.by_kid.get(kid), now)?;
            return Ok(f(&cache_entry(claims, kid, version)));
        };
        let mut f = Some(f);
        let cached = self.cache.get(&hash, now, |cached| {
            let version = self.version.load(Ordering::Acquire);
            if cached.checked_version.load(Ordering::Relaxed) != version {
                let published = self
                    .snapshot
                    .read()
                    .expect("token snapshot lock")
                    .by_kid
                    .contains_key(&cached.kid);
                if !published {
                    return Err(claims::TokenInvalid::UnknownKey);
                }
                cached.checked_version.store(version, Ordering::Relaxed);
            }
            let f = f.take().expect("called once");
            Ok(f(cached))
        });
        let f = match cached {
            Lookup::Hit(result) => return result,
            // The cache's expiry is `exp + CLOCK_LEEWAY`, verification's too.
            Lookup::Expired => return Err(claims::TokenInvalid::Expired),
            Lookup::Miss => f.take().expect("not called on a miss"),
        };
        let version = self.version.load(Ordering::Acquire);
        let snapshot = self.snapshot();
        let (claims, kid) = claims::verify(token, |kid| snapshot.by_kid.get(kid), now)?;
        let cached = cache_entry(claims, kid, version);
        let result = f(&cached);
        let expires_at = cached.claims.exp + claims::CLOCK_LEEWAY;
        let weight = cache_weight(&cached);
        // Not cached (over the client's share, or too big) is fine: the
        // token was verified, the next use verifies it again.
        let _ = self
            .cache
            .insert(hash, cached.client_id, cached, expires_at, weight, now);
        Ok(result)
    }
}

/// The verified-token cache's key for `token`: the SHA-256 of its
/// signature (see [`Tokens::with_verified`]); none without one.
pub(crate) fn cache_key(token: &str) -> Option<[u8; 32]> {
    let (_, signature) = token.rsplit_once('.')?;
    (!signature.is_empty()).then(|| key::sha256(signature.as_bytes()))
}

/// What a cached token costs in memory: its inline size, its slot and map
/// bucket, and every heap allocation it owns (claims, header values,
/// extras), each with an allocator's overhead.
pub fn cache_weight(t: &CachedToken) -> usize {
    use token_cache::alloc;
    let string = |s: &String| alloc(s.capacity());
    let c = &t.claims;
    let mut heap = string(&c.iss)
        + string(&c.sub)
        + string(&c.jti)
        + string(&c.client_id)
        + string(&c.scope)
        + c.role.as_ref().map_or(0, string)
        + c.act.as_ref().map_or(0, |a| string(&a.sub))
        + c.sid.as_ref().map_or(0, string)
        + alloc(c.aud.capacity() * std::mem::size_of::<String>())
        + c.aud.iter().map(string).sum::<usize>()
        + string(&t.kid)
        + identity_bytes(&t.identity);
    heap += btree_bytes(c.custom.iter());
    heap += alloc(c.authorization_details.capacity() * std::mem::size_of::<AuthorizationDetail>())
        + c.authorization_details
            .iter()
            .map(|d| {
                string(&d.kind)
                    + alloc(d.actions.capacity() * std::mem::size_of::<String>())
                    + d.actions.iter().map(string).sum::<usize>()
                    + alloc(d.paths.capacity() * std::mem::size_of::<String>())
                    + d.paths.iter().map(string).sum::<usize>()
            })
            .sum::<usize>();
    heap + token_cache::entry_overhead::<Option<KeyId>, CachedToken>()
}

/// The heap of an allow's identity headers (one copy of each value, and
/// the `X-Auth-Claim-*` values' names and list).
pub(super) fn identity_bytes(i: &Identity) -> usize {
    use token_cache::alloc;
    let header = |v: &HeaderValue| alloc(v.len());
    header(&i.subject)
        + header(&i.scopes)
        + header(&i.key_id)
        + header(&i.namespace)
        + header(&i.role)
        + header(&i.claims)
        + header(&i.actor)
        + alloc(i.claim_values.capacity() * std::mem::size_of::<(HeaderValue, HeaderValue)>())
        + i.claim_values
            .iter()
            .map(|(name, value)| header(name) + header(value))
            .sum::<usize>()
}

/// The heap of a `BTreeMap<String, Value>` (about one node per 11 entries,
/// accounted per entry) and of what its entries own.
pub(super) fn btree_bytes<'a>(entries: impl Iterator<Item = (&'a String, &'a serde_json::Value)>) -> usize {
    entries
        .map(|(k, v)| {
            std::mem::size_of::<(String, serde_json::Value)>()
                + 16
                + token_cache::alloc(k.capacity())
                + json_bytes(v)
        })
        .sum()
}

pub(super) fn json_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => token_cache::alloc(s.capacity()),
        Value::Array(a) => {
            token_cache::alloc(a.capacity() * std::mem::size_of::<Value>())
                + a.iter().map(json_bytes).sum::<usize>()
        }
        Value::Object(m) => btree_bytes(m.iter()),
    }
}

pub(super) fn cache_entry(claims: AccessClaims, kid: String, version: u64) -> CachedToken {
    let header = crate::server::index::header;
    let identity = Identity {
        subject: header(&claims.sub),
        scopes: header(&claims.scope),
        key_id: header(&claims.client_id),
        namespace: HeaderValue::from_static(""),
        api_key_name: HeaderValue::from_static(""),
        role: header(claims.role.as_deref().unwrap_or_default()),
        claims: decision::claims_header(&claims.custom),
        claim_values: claims
            .custom
            .iter()
            .filter_map(|(name, value)| Some((header(name), header(value.as_str()?))))
            .collect(),
        actor: header(claims.act.as_ref().map_or("", |a| a.sub.as_str())),
    };
    CachedToken {
        client_id: KeyId::try_from(claims.client_id.as_bytes()).ok(),
        identity,
        claims,
        kid,
        checked_version: AtomicU64::new(version),
    }
}

/// The external-auth decision for a presented JWT.
pub fn decide_token(
    token: &str,
    requirement: &Requirement,
    index: &Index,
    tokens: &Tokens,
    now: Timestamp,
    cache_seconds: u64,
) -> Decision {
    if !index.is_synced() || !tokens.is_synced() {
        return Decision::NotReady;
    }
    let now_s = now.as_second();
    let decided = tokens.with_verified(token, now_s, |t| {
        let Some(client_id) = t.client_id else {
            return Decision::Invalid(Invalid::ClientRevoked);
        };
        // The key that minted it: revoked, expired or gone refuses the token,
        // and so does a key the signing key's policy does not admit;
        // otherwise its ApiKey meters this use like a use of the key and says
        // where the credential comes from.
        let snapshot = tokens.snapshot.read().expect("token snapshot lock");
        let policy = snapshot.policy_by_kid.get(&t.kid);
        if tokens.revoked(policy.map(|p| &**p), &t.claims).is_some() {
            return Decision::Invalid(Invalid::Token(claims::TokenInvalid::Revoked));
        }
        index
            .find_valid_with(&client_id, now, |entry| {
                if !policy.is_some_and(|p| p.admits(&entry.owner)) {
                    return Decision::Invalid(Invalid::Token(claims::TokenInvalid::Client));
                }
                let until = match entry.valid_until.second() {
                    Some(key_end) => t.claims.exp.min(key_end),
                    None => t.claims.exp,
                };
                decision::conclude(
                    requirement,
                    t,
                    &entry.owner,
                    &entry.counters,
                    Some(until),
                    now,
                    cache_seconds,
                    |owner| t.identity.copied_for(owner),
                )
            })
            .unwrap_or(Decision::Invalid(Invalid::ClientRevoked))
    });
    decided.unwrap_or_else(|e| Decision::Invalid(Invalid::Token(e)))
}

/// RFC 7662 fields of an active token, or `None` when it is not active.
pub fn introspect_token(
    token: &str,
    index: &Index,
    tokens: &Tokens,
    now: Timestamp,
) -> Option<serde_json::Value> {
    tokens
        .with_verified(token, now.as_second(), |t| {
            if !t
                .client_id
                .is_some_and(|id| tokens.client_admitted(&t.kid, &id, index, now))
            {
                return None;
            }
            let snapshot = tokens.snapshot();
            if tokens
                .revoked(snapshot.policy_by_kid.get(&t.kid).map(|p| &**p), &t.claims)
                .is_some()
            {
                return None;
            }
            let c = &t.claims;
            let mut out = json!({
                "active": true,
                "token_type": "Bearer",
                "client_id": c.client_id,
                "sub": c.sub,
                "scope": c.scope,
                "aud": c.aud,
                "iss": c.iss,
                "exp": c.exp,
                "iat": c.iat,
                "jti": c.jti,
            });
            if let Some(role) = &c.role {
                out["role"] = json!(role);
            }
            if let Some(act) = &c.act {
                out["act"] = json!(act);
            }
            if let Some(sid) = &c.sid {
                out["sid"] = json!(sid);
            }
            if let Some(auth_time) = c.auth_time {
                out["auth_time"] = json!(auth_time);
            }
            if !c.authorization_details.is_empty() {
                out["authorization_details"] = json!(c.authorization_details);
            }
            if let Some(idp) = &c.idp {
                out["idp"] = json!(idp);
            }
            // Never over an RFC 7662 member: `active` stays a boolean (a
            // verified token has no reserved custom claim anyway).
            for (k, v) in &c.custom {
                if out.get(k).is_none() {
                    out[k] = v.clone();
                }
            }
            Some(out)
        })
        .ok()
        .flatten()
}
