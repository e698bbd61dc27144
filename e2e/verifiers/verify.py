"""Verify a latchkey access token with PyJWT, fetching the issuer's JWKS over HTTP.

usage: verify.py ISSUER AUDIENCE TOKEN  -> prints the claims as JSON, exit 1 if invalid
"""
import json
import sys

import jwt

issuer, audience, token = sys.argv[1:4]
config = json.load(__import__("urllib.request").request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10))
assert config["issuer"] == issuer, config
jwks = jwt.PyJWKClient(config["jwks_uri"], cache_keys=False)
key = jwks.get_signing_key_from_jwt(token)
header = jwt.get_unverified_header(token)
if header.get("typ") != "at+jwt":
    sys.exit(f"typ is {header.get('typ')!r}, not at+jwt")
claims = jwt.decode(
    token,
    key.key,
    algorithms=[header["alg"]] if header["alg"] in ("ES256", "EdDSA", "RS256") else [],
    audience=audience,
    issuer=issuer,
    options={"require": ["exp", "iat", "iss", "aud", "sub"]},
)
print(json.dumps(claims))
