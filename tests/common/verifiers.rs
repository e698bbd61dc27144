//! The third-party verifiers of e2e/verifiers (PyJWT from PyPI, node
//! `jose` from npm, installed by `e2e/verifiers/install`).

use super::repo;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn verifier(name: &str) -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("LATCHKEY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/latchkey"));
    let dir = cache.join("verifiers");
    let out = Command::new(repo().join("e2e/verifiers/install"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2e/verifiers/install failed (PyJWT from PyPI, jose from npm):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match name {
        "pyjwt" => (dir.join("py/bin/python"), repo().join("e2e/verifiers/verify.py")),
        _ => (PathBuf::from("node"), repo().join("e2e/verifiers/verify.mjs")),
    }
}

/// Runs a third-party verifier; returns the claims it verified, or its error.
pub fn third_party_verify(name: &str, issuer: &str, audience: &str, token: &str) -> Result<Value, String> {
    third_party_verify_trusting(name, issuer, audience, token, None)
}

/// [`third_party_verify`] of an `https://` issuer whose certificate `ca`
/// (a PEM file) signed: Python's `SSL_CERT_FILE`, node's
/// `NODE_EXTRA_CA_CERTS`.
pub fn third_party_verify_trusting(
    name: &str,
    issuer: &str,
    audience: &str,
    token: &str,
    ca: Option<&std::path::Path>,
) -> Result<Value, String> {
    let (program, script) = verifier(name);
    let cache_dir = script.parent().unwrap().to_owned();
    let jose_dir = std::env::var_os("LATCHKEY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/latchkey"))
        .join("verifiers/node");
    let out = Command::new(program)
        .arg(script)
        .args([issuer, audience, token])
        .env("JOSE_DIR", jose_dir)
        .envs(ca.map(|ca| ("SSL_CERT_FILE", ca.as_os_str())))
        .envs(ca.map(|ca| ("NODE_EXTRA_CA_CERTS", ca.as_os_str())))
        .current_dir(cache_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {name} verifier: {e}"));
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
