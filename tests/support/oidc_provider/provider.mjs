// A real OpenID Connect provider for gpuhub's login tests (tests/support/oidc.py starts it):
// panva's oidc-provider, OpenID Certified, with a minimal configuration read from a JSON
// file: the issuer, the TLS pair, one client, and the accounts with their groups claim.
//
// The login page is the library's own development interaction (any password; these
// accounts are test fixtures). Consent is granted for the one first-party client, as an
// institution's provider does for its own services.
import fs from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

const provider = new Provider(config.issuer, {
  clients: [{
    client_id: config.client.id,
    client_secret: config.client.secret,
    redirect_uris: config.client.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: [config.cookie_key] },
  async findAccount(ctx, id) {
    const account = config.accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: account.username ?? id,
          name: id,
          email: `${id}@gpuhub.test`,
          groups: account.groups,
        };
      },
    };
  },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile email groups');
    await grant.save();
    return grant;
  },
});

const server = https.createServer({
  cert: fs.readFileSync(config.tls.cert),
  key: fs.readFileSync(config.tls.key),
}, provider.callback());
server.listen(config.port, config.host, () => {
  console.log(`oidc-provider listening on ${config.issuer}`);
});
