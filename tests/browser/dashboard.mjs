// The ops dashboard in a real browser (issue 5): an admin and a viewer sign in with password
// + TOTP; a partner admin consents in the same run; the admin finds the partner, rotates it,
// runs the access check, syncs its customers, consents one, checks access to each, removes one
// with a typed confirmation, and revokes the partner; the token API then refuses the partner;
// the viewer sees the customers but no button, and is refused when posting a form anyway. Every page visited is
// saved as a screenshot in $SCREENSHOTS. Run by tests/browser.rs, which starts the stack.
import assert from 'node:assert/strict';
import { env, launch, screenshot, signIn, text, tokenRequest } from './lib.mjs';

const sv = env('SV_URL');
const tenant = env('TENANT');
const resource = env('RESOURCE');
const accounts = JSON.parse(env('ACCOUNTS'));
const client = JSON.parse(env('CLIENT'));
const NEW_PASSWORD = 'correct horse battery staple 42';

const browser = await launch();
try {
  // Each person has their own browser context: their own cookies, like their own machine.
  const admin = await (await browser.newContext()).newPage();
  const partnerAdmin = await (await browser.newContext()).newPage();
  const viewer = await (await browser.newContext()).newPage();

  // --- The admin signs in: password + code, then the forced password change.
  await signIn(admin, sv, accounts.admin, NEW_PASSWORD);
  assert.match(await text(admin), /0 Partners in all/);
  await screenshot(admin, '01-overview-empty');

  // --- Jane, Contoso's admin, consents through the dev IdP with MFA.
  await partnerAdmin.goto(`${sv}/onboard`);
  await screenshot(partnerAdmin, '02-onboarding');
  await partnerAdmin.getByRole('button', { name: 'Grant consent' }).click();
  await partnerAdmin.getByLabel('Account').fill('jane@contoso.example');
  await partnerAdmin.getByLabel(/multi-factor authentication/).check();
  await partnerAdmin.getByRole('button', { name: 'Accept' }).click();
  await partnerAdmin.waitForURL(/\/onboard\/callback/);
  assert.match(await text(partnerAdmin), /Consent recorded for Contoso/);
  assert.match(await text(partnerAdmin), /Multi-factor authentication satisfied/);
  await screenshot(partnerAdmin, '03-consent-recorded');

  // --- The overview now counts Contoso: compare what the page says, not just a status code.
  await admin.reload();
  const overview = await text(admin);
  for (const expected of [
    '1 Partners in all',
    '1 Active',
    '0 At risk',
    '0 Re-consent required',
    '0 Revoked',
    "The app's credentials are accepted by Entra.",
    'No usable grant is within 14 days of the limit.',
  ]) {
    assert.ok(overview.includes(expected), `overview says "${expected}": ${overview}`);
  }
  assert.equal(await admin.locator('svg.chart').count(), 2, 'two server-rendered charts');
  await screenshot(admin, '04-overview');

  let [status, body] = await tokenRequest(sv, client, tenant, resource);
  assert.equal(status, 200, 'the token API serves Contoso');

  // --- The admin finds Contoso by its domain and opens its page.
  await admin.getByRole('navigation').getByRole('link', { name: 'Partners' }).click();
  await admin.getByLabel('Name, tenant id or domain').fill('contoso.example');
  await admin.getByRole('button', { name: 'Show' }).click();
  const rows = admin.locator('main table tbody tr');
  assert.equal(await rows.count(), 1, 'one partner matches contoso.example');
  assert.match(await rows.first().innerText(), /Contoso/);
  await screenshot(admin, '05-partners-search');
  await rows.first().getByRole('link', { name: 'Contoso' }).click();
  assert.equal(new URL(admin.url()).pathname, `/ops/partners/${tenant}`);
  const detail = await text(admin);
  assert.match(detail, /jane@contoso\.example/, 'the consent history names Jane');
  assert.match(detail, /MFA at consent yes/);
  await screenshot(admin, '06-partner');

  // --- Rotate now: one redemption, the outcome shown on the page.
  await admin.getByRole('button', { name: 'Rotate now' }).click();
  assert.match(await text(admin, '[role=status]'), /Rotated: the refresh token was redeemed/);
  assert.match(await text(admin), /manual success/, 'the attempt is listed');

  // --- Access check: a live redemption per configured resource, MFA read from `amr`.
  await admin.getByRole('button', { name: 'Access check', exact: true }).click();
  const checks = admin.locator('main table tbody tr');
  const checked = await checks.count();
  assert.ok(checked >= 1, 'at least the primary resource is checked');
  // Jane consented to Partner Center; a resource she did not consent to shows as such.
  let primaryChecked = false;
  for (let i = 0; i < checked; i++) {
    const row = (await checks.nth(i).innerText()).replace(/\s+/g, ' ');
    if (row.startsWith(resource)) {
      assert.match(row, /issued yes/, `Partner Center issued, with MFA: ${row}`);
      primaryChecked = true;
    } else {
      assert.match(row, /issued yes|resource not consented/, row);
    }
  }
  assert.ok(primaryChecked, 'the primary resource is checked');
  assert.doesNotMatch(await admin.content(), /eyJ[\w-]{10,}\./, 'no token on the page');
  await screenshot(admin, '07-access-check');

  // --- Contoso's customers: sync lists them from Partner Center, one is consented, the
  // customer access check redeems once per customer, one is removed with a typed confirmation.
  await admin.goto(`${sv}/ops/partners/${tenant}`);
  const customers = admin.locator('#customers-table tbody tr');
  await admin.getByRole('button', { name: 'Sync customers' }).click();
  assert.match(await text(admin, '[role=status]'), /Synced:/);
  const customerRow = (name) => customers.filter({ hasText: name });
  for (const name of ['Adatum', 'Northwind', 'Tailspin']) {
    assert.equal(await customerRow(name).count(), 1, `${name} is listed after the sync`);
    assert.match(await customerRow(name).innerText(), /unconsented/);
  }
  await screenshot(admin, '07a-customers-synced');
  await customerRow('Adatum').getByRole('button', { name: 'Consent', exact: true }).click();
  assert.match(await text(admin, '[role=status]'), /Adatum/);
  assert.match(await customerRow('Adatum').innerText(), /consented[\s\S]*Directory\.Read\.All/);
  assert.doesNotMatch(await customerRow('Adatum').innerText(), /unconsented/);
  assert.match(await customerRow('Northwind').innerText(), /unconsented/, 'only Adatum');
  await admin.getByRole('button', { name: 'Customer access check' }).click();
  const checkedRow = async (name) =>
    (await admin.locator('main table tbody tr').filter({ hasText: name }).innerText()).replace(/\s+/g, ' ');
  assert.match(await checkedRow('Adatum'), /issued/);
  assert.match(await checkedRow('Northwind'), /not consented/);
  assert.match(await checkedRow('Tailspin'), /no delegated access/);
  assert.doesNotMatch(await admin.content(), /eyJ[\w-]{10,}\./, 'no token on the page');
  await screenshot(admin, '07b-customer-access-check');
  await admin.goto(`${sv}/ops/partners/${tenant}`);
  const adatum = customerRow('Adatum');
  await adatum.getByText('Remove…').click();
  await adatum.getByLabel('To remove the app from Adatum, type its domain or name').fill('adatum.example');
  await adatum.getByRole('button', { name: 'Remove', exact: true }).click();
  assert.match(await text(admin, '[role=status]'), /Removed/);
  assert.match(await customerRow('Adatum').innerText(), /removed/);
  await screenshot(admin, '07c-customer-removed');
  await admin.goto(`${sv}/ops`);
  assert.match(await text(admin), /3 Customers in all/);
  assert.match(await text(admin), /1 Removed/);

  // --- A viewer sees the partner but no action, and a forged revoke form is refused.
  await signIn(viewer, sv, accounts.viewer, NEW_PASSWORD);
  await viewer.goto(`${sv}/ops/partners/${tenant}`);
  assert.match(await text(viewer), /Contoso/);
  for (const name of ['Revoke and purge', 'Rotate now', 'Access check', 'Sync customers', 'Consent', 'Remove']) {
    assert.equal(await viewer.getByRole('button', { name, exact: true }).count(), 0, `viewer sees no "${name}"`);
  }
  assert.equal(await viewer.locator('#customers-table tbody tr').count(), 3, 'a viewer sees the customers');
  await screenshot(viewer, '08-partner-as-viewer');
  const viewerCsrf = await viewer.locator('input[name=csrf]').first().inputValue();
  const forged = await viewer.request.post(`${sv}/ops/partners/${tenant}/revoke`, {
    form: { csrf: viewerCsrf, confirm: tenant },
    maxRedirects: 0,
  });
  assert.equal(forged.status(), 403, 'a viewer posting the revoke form is refused');
  [status] = await tokenRequest(sv, client, tenant, resource);
  assert.equal(status, 200, 'nothing changed: Contoso is still served');

  // --- The admin revokes: typed confirmation, then the token API refuses Contoso at once.
  await admin.goto(`${sv}/ops/partners/${tenant}`);
  await admin.getByLabel("To revoke and purge, type this partner's tenant id").fill(tenant);
  await admin.getByRole('button', { name: 'Revoke and purge' }).click();
  assert.match(await text(admin, 'h1'), /revoked/);
  assert.match(await text(admin, '[role=status]'), /crypto-shredded/);
  for (const name of ['Revoke and purge', 'Rotate now', 'Access check', 'Sync customers', 'Consent']) {
    assert.equal(await admin.getByRole('button', { name, exact: true }).count(), 0, `no "${name}" once revoked`);
  }
  assert.equal(await admin.locator('#customers-table tbody tr').count(), 3, 'the customers stay listed');
  await screenshot(admin, '09-partner-revoked');
  [status, body] = await tokenRequest(sv, client, tenant, resource);
  assert.equal(status, 409, `revoked Contoso is refused: ${JSON.stringify(body)}`);
  assert.ok(['reconsent_required', 'partner_revoked'].includes(body.code), body.code);

  // --- The other pages, as the security team sees them.
  await admin.goto(`${sv}/ops/security`);
  const report = await text(admin);
  assert.match(report, /100 % Tokens issued with MFA/, report);
  assert.match(report, /0 Partners consented without MFA/, report);
  await screenshot(admin, '10-security-report');
  await admin.goto(`${sv}/ops/audit`);
  const audit = await text(admin);
  for (const action of ['ops.partner.revoke', 'ops.partner.check', 'ops.partner.rotate', 'ops.sign_in']) {
    assert.ok(audit.includes(action), `the audit log shows ${action}`);
  }
  await screenshot(admin, '11-audit');
  await admin.getByRole('button', { name: 'Verify chain' }).click();
  assert.match(await text(admin), /chain intact/);
  await screenshot(admin, '12-audit-verified');
  for (const [path, name] of [
    ['/ops/integrations', '13-integrations'],
    ['/ops/invitations', '14-invitations'],
    ['/ops/keys', '15-keys'],
    ['/ops', '16-overview-after'],
  ]) {
    await admin.goto(`${sv}${path}`);
    await screenshot(admin, name);
  }

  console.log('browser suite: every step passed');
} finally {
  await browser.close();
}
