// A server restart never logs a chat user out: the server keeps the token secret it generated
// in its data dir (so the access token still connects), and when the secret did change (the
// access token is refused with 3500), the UI refreshes its access token with the refresh token
// and reconnects instead of showing "You are logged out".

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { openBrowser, screenshots, startServer, uiFor } from './harness.mjs';

let server;
let ui;
let dora;

const session = () => dora.page.evaluate(() => JSON.parse(localStorage.getItem('hubbub.session')));

/** Counts the connections the UI's client makes from now on. */
async function countConnects() {
  await dora.page.evaluate(() => {
    window.__connects = 0;
    window.hubbub.client.on('connected', () => {
      window.__connects += 1;
    });
  });
}

async function reconnected() {
  await dora.page.waitForFunction(() => window.__connects > 0 && window.hubbub.client.state === 'connected', null, {
    timeout: 30_000,
  });
}

async function stillLoggedIn() {
  assert.equal(await dora.page.getByText('You are logged out').count(), 0, 'the UI logged out');
  assert.equal(await dora.page.getByLabel('Password').count(), 0, 'the login form is shown');
  const s = await session();
  assert.ok(s && s.refresh_token, 'the session is kept');
  const res = await dora.page.evaluate(async (token) => {
    const r = await fetch('/api/rooms', { headers: { authorization: `Bearer ${token}` } });
    return r.status;
  }, s.access_token);
  assert.equal(res, 200, 'the stored access token works');
}

describe('server restarts', () => {
  before(async () => {
    // No token secret configured: the first-run case.
    server = await startServer({ tokenSecret: null });
    ui = await uiFor(server.url);
    dora = await openBrowser('dora');
    await dora.page.goto(ui.url);
    await dora.page.getByLabel('Username').fill('dora');
    await dora.page.getByLabel('Password').fill('correct horse 1');
    await dora.page.getByRole('button', { name: 'Sign up' }).click();
    await dora.page.locator('.app[data-conn="connected"]').waitFor({ timeout: 20_000 });
  });

  after(async () => {
    if (dora) {
      await dora.page.screenshot({ path: join(screenshots, 'restart-last.png') }).catch(() => {});
      await dora.close();
    }
    await ui?.stop();
    await server?.stop();
  });

  it('keeps the generated secret: the same access token connects again', async () => {
    const before = await session();
    await countConnects();
    server = await server.restart();
    await reconnected();
    await stillLoggedIn();
    assert.equal((await session()).access_token, before.access_token, 'no refresh was needed');
  });

  it('refreshes and reconnects when the server refuses the access token (secret changed)', async () => {
    const before = await session();
    await countConnects();
    server = await server.restart({ tokenSecret: 'a-new-secret-after-the-restart-0123456789' });
    await reconnected();
    await stillLoggedIn();
    assert.notEqual((await session()).access_token, before.access_token, 'a fresh access token');
  });

  it('had no script errors', () => {
    assert.deepEqual(dora.errors, []);
  });
});
