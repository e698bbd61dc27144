// Verify a latchkey access token with node `jose`, fetching the issuer's JWKS over HTTP.
// usage: node verify.mjs ISSUER AUDIENCE TOKEN  -> prints the claims as JSON, exit 1 if invalid
import { createRequire } from "node:module";
const require = createRequire(process.env.JOSE_DIR + "/package.json");
const { createRemoteJWKSet, jwtVerify } = require("jose");

const [issuer, audience, token] = process.argv.slice(2);
const config = await (await fetch(issuer + "/.well-known/openid-configuration")).json();
if (config.issuer !== issuer) throw new Error("discovery issuer mismatch: " + config.issuer);
const jwks = createRemoteJWKSet(new URL(config.jwks_uri));
try {
  const { payload } = await jwtVerify(token, jwks, { issuer, audience, typ: "at+jwt" });
  console.log(JSON.stringify(payload));
} catch (e) {
  console.error(String(e));
  process.exit(1);
}
