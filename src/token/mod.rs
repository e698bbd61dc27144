//! Short-lived tokens (TokenPolicy), pure logic: signing-key material
//! ([`keys`]), the signing-key schedule ([`schedule`]), and token requests,
//! claims and verification ([`claims`]), delegation and sessions
//! ([`session`]), revocation ([`revocation`]). No client; callers pass the time.

pub mod claims;
pub mod federation;
pub mod issuer;
pub mod jwks;
pub mod keys;
pub mod path;
pub mod permissions;
pub mod revocation;
pub mod schedule;
pub mod session;
