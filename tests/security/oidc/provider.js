// A real OpenID Connect provider (panva/oidc-provider, OpenID certified) for pacsd's OIDC
// login tests (R-E1). Started by tests/security/test_oidc.py:
//   node provider.js PORT REDIRECT_URI KID
// Listens on 127.0.0.1:PORT with issuer http://127.0.0.1:PORT, one confidential client
// "pacsd" (PKCE required; after logout the provider may send the browser to that pacsd's
// /viewer/), the provider's development login / consent forms (any password),
// and accounts whose claims carry pacsd roles and institutions. A fresh RS256 key with
// the given kid is made at start (restart with another kid = key rotation).
//
// Test switch: POST /__test/mode {"mode": "..."} makes the token endpoint's id_token
// "wrong-aud" (aud = another client), "expired" (exp in the past), "bad-signature"
// (signed by another key under the same kid) or "ok" again -- re-signed here, so pacsd
// sees exactly what a misbehaving or hostile provider would send.
import http from 'node:http';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const [port, redirectUri, kid = 'k1'] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signing = { ...(await jose.exportJWK(privateKey)), kid, use: 'sig', alg: 'RS256' };
const { privateKey: rogue } = await jose.generateKeyPair('RS256', { extractable: true });

const ACCOUNTS = {
  'dr-oidc': { preferred_username: 'dr-oidc', groups: ['pacs-radiology'], hospital: ['A'] },
  'dr-b': { preferred_username: 'dr-b', groups: ['pacs-radiology'], hospital: ['B'] },
  'sec-oidc': { preferred_username: 'sec-oidc', groups: ['pacs-security'], hospital: [] },
  'nobody': { preferred_username: 'nobody', groups: ['canteen'], hospital: ['A'] },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'pacsd',
    client_secret: 'pacsd-test-client-secret-0123456789',
    redirect_uris: [redirectUri],
    // RP-initiated logout returns to the viewer of the same pacsd.
    post_logout_redirect_uris: [new URL('/viewer/', redirectUri).href],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signing] },
  cookies: { keys: ['pacsd-test-cookie-key'] },
  pkce: { required: () => true },
  claims: { openid: ['sub'], profile: ['preferred_username'], pacsd: ['groups', 'hospital'] },
  scopes: ['openid', 'profile', 'pacsd'],
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const claims = ACCOUNTS[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
});
provider.proxy = false;

let mode = 'ok';
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path !== '/token' || mode === 'ok' || !ctx.body || !ctx.body.id_token) return;
  const claims = jose.decodeJwt(ctx.body.id_token);
  let key = privateKey;
  if (mode === 'wrong-aud') claims.aud = 'another-client';
  if (mode === 'expired') { claims.iat -= 7200; claims.exp = claims.iat + 60; }
  if (mode === 'bad-signature') key = rogue;
  ctx.body = { ...ctx.body, id_token: await new jose.SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', kid }).sign(key) };
});

const callback = provider.callback();
http.createServer((req, res) => {
  if (req.url === '/__test/mode' && req.method === 'POST') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => { mode = JSON.parse(body).mode; res.writeHead(204); res.end(); });
    return;
  }
  callback(req, res);
}).listen(Number(port), '127.0.0.1', () => { console.log(`listening ${issuer}`); });
