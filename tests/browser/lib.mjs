// Shared helpers of the browser suite: Debian's Chromium through playwright-core, RFC 6238
// codes for the ops users, screenshots, page text. Nothing here talks to samvault's internals:
// only the pages a person sees and the token API an integration calls.
import { chromium } from 'playwright-core';
import { createHmac } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import assert from 'node:assert/strict';

export const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} is not set (this script is run by tests/browser.rs)`);
  return value;
};

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    // Root in CI containers: Chromium's sandbox needs user namespaces it may not have.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0, value = 0;
  const out = [];
  for (const c of text.replace(/=+$/, '').toUpperCase()) {
    const index = alphabet.indexOf(c);
    assert.ok(index >= 0, 'base32 secret');
    value = (value << 5) | index;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** The RFC 6238 code (HMAC-SHA1, 30 s, 6 digits) of `secret` for the step `offset` away. */
export function totp(secret, offset = 0) {
  const step = Math.floor(Date.now() / 1000 / 30) + offset;
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const at = mac[mac.length - 1] & 0x0f;
  const number = (mac.readUInt32BE(at) & 0x7fffffff) % 1_000_000;
  return String(number).padStart(6, '0');
}

/** Saves a full-page screenshot as `DIR/NAME.png`. */
export async function screenshot(page, name) {
  const dir = env('SCREENSHOTS');
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: `${dir}/${name}.png`, fullPage: true });
}

/** What a reader sees in `selector`: the rendered text, whitespace collapsed. */
export async function text(page, selector = 'main') {
  return (await page.locator(selector).innerText()).replace(/\s+/g, ' ').trim();
}

/**
 * Signs an ops user in with password and a one-time code; at first sign-in, chooses the new
 * password. Ends on the overview.
 */
export async function signIn(page, sv, account, newPassword) {
  await page.goto(`${sv}/ops`);
  assert.equal(new URL(page.url()).pathname, '/ops/signin', 'without a session /ops goes to sign-in');
  await page.getByLabel('User name').fill(account.username);
  await page.getByLabel('Password').fill(account.password);
  await page.getByLabel('Code from your authenticator app').fill(totp(account.totp_secret));
  await page.getByRole('button', { name: 'Sign in' }).click();
  if (new URL(page.url()).pathname === '/ops/password') {
    await page.getByLabel('Current password').fill(account.password);
    await page.getByLabel('New password (at least 12 characters)').fill(newPassword);
    await page.getByLabel('New password again').fill(newPassword);
    await page.getByRole('button', { name: 'Change password' }).click();
  }
  assert.equal(new URL(page.url()).pathname, '/ops', `${account.username} reaches the overview`);
}

/** Calls the token API as an integration would; returns [status, body]. */
export async function tokenRequest(sv, client, tenant, resource) {
  const response = await fetch(`${sv}/api/v1/partners/${tenant}/token`, {
    method: 'POST',
    headers: {
      authorization: 'Basic ' + Buffer.from(`${client.id}:${client.secret}`).toString('base64'),
      'content-type': 'application/json',
    },
    body: JSON.stringify({ resource, purpose: 'browser suite check' }),
  });
  return [response.status, await response.json()];
}
