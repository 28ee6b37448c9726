// A real OAuth 2.0 / OpenID Connect authorization server for the UserToken e2e tests: panva's certified
// oidc-provider with its built-in development login and consent pages (any user name, any password).
// Configuration comes from the environment so the tests choose ports, clients and token lifetimes:
//   PORT               port on 127.0.0.1 (the issuer is http://127.0.0.1:PORT)
//   OIDC_CLIENTS       JSON array of client metadata (client_id, client_secret, redirect_uris, ...)
//   SHORT_TTL          access-token lifetime in seconds for clients whose id starts with "short-"
// GET /__test__/events lists what the token endpoint did (grant type, client, outcome), so a test can count
// refreshes; it never lists a token.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.OIDC_CLIENTS || '[]');
const shortTtl = Number(process.env.SHORT_TTL || 20);
const events = [];

const provider = new Provider(issuer, {
  clients,
  cookies: { keys: ['wso-e2e-cookie-key-not-a-secret'] },
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'] },
  scopes: ['openid', 'offline_access', 'profile'],
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, preferred_username: id, name: id }),
  }),
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    deviceFlow: { enabled: true }, // RFC 8628, at /device/auth (codes) and /device (the user's page)
  },
  // PKCE (S256 only) for every client but Vault's OIDC auth method, which does not send it (Vault 1.14).
  pkce: { required: (ctx, client) => client.clientId !== 'vault' },
  rotateRefreshToken: true, // every refresh spends the refresh token and issues a new one
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: (ctx, token, client) => (client && client.clientId.startsWith('short-') ? shortTtl : 3600),
    RefreshToken: 24 * 3600,
    Grant: 24 * 3600,
    Session: 3600,
    Interaction: 600,
    AuthorizationCode: 60,
    IdToken: 3600,
  },
});

const record = (kind) => (ctx, err) => {
  events.push({
    kind,
    grant_type: ctx?.oidc?.params?.grant_type ?? null,
    client_id: ctx?.oidc?.client?.clientId ?? null,
    error: err ? (err.error || err.message) : null,
    at: Date.now(),
  });
};
provider.on('grant.success', record('grant.success'));
provider.on('grant.error', record('grant.error'));
provider.on('grant.revoked', (ctx) => events.push({ kind: 'grant.revoked', client_id: ctx?.oidc?.client?.clientId ?? null, at: Date.now() }));

provider.use(async (ctx, next) => {
  if (ctx.path === '/__test__/events') {
    ctx.body = events;
    return;
  }
  await next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening at ${issuer}`);
});
