//! Signing-key material: generation (rcgen), the private key as PKCS#8 PEM
//! (what the policy's Secret holds), the public half as a JWK (what status
//! and the JWKS publish), and the jsonwebtoken keys built from them.
//!
//! Errors never carry key material.

use crate::crd::SigningAlgorithm;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::distr::{Alphanumeric, SampleString};

/// Length of a generated `kid`.
pub const KID_LEN: usize = 16;

/// A key that could not be generated or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate a {0} signing key")]
    Generate(&'static str),
    #[error("the private key of kid {kid} is not a valid {alg} PKCS#8 PEM key")]
    Private { kid: String, alg: &'static str },
    #[error("the public JWK of kid {0} is not a valid JWK")]
    Public(String),
}

/// A newly generated signing key.
pub struct GeneratedKey {
    pub kid: String,
    /// PKCS#8 PEM of the private key.
    pub pem: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("kid", &self.kid)
            .field("pem", &"<redacted>")
            .finish()
    }
}

pub fn jwt_algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        SigningAlgorithm::RS256 => Algorithm::RS256,
    }
}

/// A random key id: 16 base62 characters.
pub fn new_kid() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), KID_LEN)
}

/// Generates a key pair for `alg` with rcgen.
pub fn generate(alg: SigningAlgorithm) -> Result<GeneratedKey, KeyError> {
    let rcgen_alg = match alg {
        SigningAlgorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        SigningAlgorithm::EdDSA => &rcgen::PKCS_ED25519,
        SigningAlgorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).map_err(|_| KeyError::Generate(alg.as_str()))?;
    Ok(GeneratedKey {
        kid: new_kid(),
        pem: pair.serialize_pem(),
    })
}

/// The encoding (signing) key of a PKCS#8 PEM private key.
pub fn encoding_key(kid: &str, alg: SigningAlgorithm, pem: &[u8]) -> Result<EncodingKey, KeyError> {
    let key = match alg {
        SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(pem),
        SigningAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem),
    };
    key.map_err(|_| KeyError::Private {
        kid: kid.to_owned(),
        alg: alg.as_str(),
    })
}

/// The public JWK (JSON, with `kid`, `alg` and `use: sig`) of a private key.
pub fn public_jwk(kid: &str, alg: SigningAlgorithm, pem: &[u8]) -> Result<String, KeyError> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let private_err = || KeyError::Private {
        kid: kid.to_owned(),
        alg: alg.as_str(),
    };
    // The key must also load as a signing key.
    let encoding = encoding_key(kid, alg, pem)?;
    let mut jwk = match alg {
        // jsonwebtoken derives RSA's n and e; EC and Ed25519 come from the
        // raw public key rcgen gives (jsonwebtoken only reads PKCS#8 v1
        // Ed25519 keys, and aws-lc writes v2).
        SigningAlgorithm::RS256 => {
            let jwk = Jwk::from_encoding_key(&encoding, jwt_algorithm(alg)).map_err(|_| private_err())?;
            serde_json::to_value(&jwk).map_err(|_| private_err())?
        }
        SigningAlgorithm::ES256 | SigningAlgorithm::EdDSA => {
            let text = std::str::from_utf8(pem).map_err(|_| private_err())?;
            let pair = rcgen::KeyPair::from_pem(text).map_err(|_| private_err())?;
            let raw = pair.public_key_raw();
            match alg {
                SigningAlgorithm::ES256 if raw.len() == 65 && raw[0] == 4 => serde_json::json!({
                    "kty": "EC", "crv": "P-256",
                    "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65]),
                }),
                SigningAlgorithm::EdDSA if raw.len() == 32 => serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": B64.encode(raw),
                }),
                _ => return Err(private_err()),
            }
        }
    };
    jwk["kid"] = kid.into();
    jwk["alg"] = alg.as_str().into();
    jwk["use"] = "sig".into();
    // Only public members, in a stable order.
    let public: std::collections::BTreeMap<String, serde_json::Value> = jwk
        .as_object()
        .ok_or_else(private_err)?
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "kty" | "crv" | "x" | "y" | "n" | "e" | "kid" | "alg" | "use"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::to_string(&public).map_err(|_| private_err())
}

/// The verifying key of a published JWK; checks that it is the algorithm
/// status says (a JWK for another family is refused, not reinterpreted).
pub fn decoding_key(kid: &str, alg: SigningAlgorithm, jwk_json: &str) -> Result<DecodingKey, KeyError> {
    let err = || KeyError::Public(kid.to_owned());
    let jwk: Jwk = serde_json::from_str(jwk_json).map_err(|_| err())?;
    let family_matches = matches!(
        (&jwk.algorithm, alg),
        (
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_),
            SigningAlgorithm::ES256
        ) | (
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_),
            SigningAlgorithm::EdDSA
        ) | (
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_),
            SigningAlgorithm::RS256
        )
    );
    if !family_matches {
        return Err(err());
    }
    DecodingKey::from_jwk(&jwk).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_generates_signs_and_verifies_through_its_public_jwk() {
        for alg in [
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::RS256,
        ] {
            let key = generate(alg).unwrap();
            assert_eq!(key.kid.len(), KID_LEN);
            assert!(key.pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let jwk = public_jwk(&key.kid, alg, key.pem.as_bytes()).unwrap();
            assert!(
                !jwk.contains("\"d\""),
                "{alg:?}: a public JWK has no private part"
            );
            assert!(jwk.contains(&key.kid));
            let mut header = jsonwebtoken::Header::new(jwt_algorithm(alg));
            header.kid = Some(key.kid.clone());
            let claims = serde_json::json!({"sub": "x", "exp": 4_000_000_000u64});
            let enc = encoding_key(&key.kid, alg, key.pem.as_bytes()).unwrap();
            let token = jsonwebtoken::encode(&header, &claims, &enc).unwrap();
            let dec = decoding_key(&key.kid, alg, &jwk).unwrap();
            let v = jsonwebtoken::Validation::new(jwt_algorithm(alg));
            jsonwebtoken::decode::<serde_json::Value>(&token, &dec, &v).unwrap();
        }
    }

    #[test]
    fn a_jwk_of_another_family_is_refused() {
        let key = generate(SigningAlgorithm::EdDSA).unwrap();
        let jwk = public_jwk(&key.kid, SigningAlgorithm::EdDSA, key.pem.as_bytes()).unwrap();
        assert!(decoding_key(&key.kid, SigningAlgorithm::ES256, &jwk).is_err());
        assert!(encoding_key("k", SigningAlgorithm::RS256, key.pem.as_bytes()).is_err());
        assert!(format!("{key:?}").contains("redacted"));
    }
}
