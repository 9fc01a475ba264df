// A real OpenID Connect provider for the console's sign-in tests: npm `oidc-provider` (pinned in
// package.json) on 127.0.0.1, with one public client (PKCE required), its development login
// form (any account named in --accounts signs in with any password), grants given without a
// consent screen, and JWT access tokens for the resource `urn:carebridge` (audience
// `carebridge`, scope `careteam`, the account's `practitioner` claim).
//
//   node oidc-provider.mjs --redirect http://127.0.0.1:PORT/ui/oidc/callback \
//        --accounts '{"nurse-lassen":{"practitioner":"N8SD2"}}'
//
// Prints `listening http://127.0.0.1:<port>` once it serves.
import http from 'node:http';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
  return process.argv[i + 1];
}

const redirect = arg('redirect');
const accounts = JSON.parse(arg('accounts'));
const resource = 'urn:carebridge';

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'carebridge-console',
      token_endpoint_auth_method: 'none',
      redirect_uris: [redirect],
      grant_types: ['authorization_code'],
      response_types: ['code'],
    }],
    jwks: { keys: [{ ...key, kid: randomUUID(), use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [randomUUID()] },
    scopes: ['openid', 'careteam'],
    features: {
      devInteractions: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, indicator) => {
          if (indicator !== resource) throw new Error(`unknown resource ${indicator}`);
          return {
            scope: 'careteam',
            audience: 'carebridge',
            accessTokenTTL: 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    async findAccount(_ctx, id) {
      if (!accounts[id]) return undefined;
      return { accountId: id, claims: async () => ({ sub: id }) };
    },
    async extraTokenClaims(_ctx, token) {
      const account = accounts[token.accountId];
      return account ? { practitioner: account.practitioner } : {};
    },
    // No consent screen: every client request of a signed-in account is granted.
    async loadExistingGrant(ctx) {
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid careteam');
      grant.addResourceScope(resource, 'careteam');
      await grant.save();
      return grant;
    },
  });
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});
