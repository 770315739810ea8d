// The chat in real browsers against the real server: sign up, rooms and invitations, chat both
// ways, typing, ticks, edit/delete/reactions/replies, search, notifications, DMs, history
// paging, server errors next to their cause, offline writing, and the fallback transports
// when WebSocket is blocked. Screenshots of each screen go to screenshots/ (git-ignored).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { DESKTOP, openBrowser, screenshots, shoot, startServer, uiFor } from './harness.mjs';

const PASSWORD = 'correct horse 1';
let server;
let ui;
let alice;
let bob;
let carol;
let firstToken;
const people = [];

/** A test that saves every page's screenshot when it fails (screenshots/fail-*.png). */
function test(name, fn) {
  it(name, async () => {
    try {
      await fn();
    } catch (e) {
      const slug = name.replace(/[^a-z0-9]+/gi, '-').slice(0, 40);
      for (const p of people) {
        for (const [i, page] of p.context.pages().entries()) {
          await page.screenshot({ path: join(screenshots, `fail-${slug}-${p.name}-${i}.png`) }).catch(() => {});
        }
      }
      throw e;
    }
  });
}

/** Polls `check` until it returns a truthy value (returned) or the time runs out. */
async function until(check, what, timeout = 15_000) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const composer = (u) => u.page.getByRole('textbox', { name: 'Message' });
/** Stored messages whose text contains `text` (a string) or matches it (a RegExp). */
const message = (u, text) =>
  u.page.locator('article.msg[data-seq]').filter({ has: u.page.locator('.text', { hasText: text }) });
const pendingMsg = (u, text) => u.page.locator('article.msg.pending', { hasText: text });

async function visible(u, text, timeout) {
  await message(u, text).first().waitFor({ state: 'visible', timeout: timeout ?? 15_000 });
}

async function send(u, text) {
  const box = composer(u);
  await box.click();
  await box.fill(text);
  await box.press('Enter');
}

async function tick(u, text) {
  return message(u, text).first().locator('.tick').getAttribute('data-status');
}

/** Texts of the stored messages in the open conversation, in order. */
async function texts(u) {
  return u.page.locator('article.msg[data-seq] .text').allInnerTexts();
}

async function signUp(u, name) {
  await u.page.goto(ui.url);
  await u.page.getByLabel('Username').fill(name);
  await u.page.getByLabel('Password').fill(PASSWORD);
  await u.page.getByRole('button', { name: 'Sign up' }).click();
  await u.page.locator('.app[data-conn="connected"]').waitFor({ timeout: 20_000 });
}

async function openRoom(u, name) {
  await u.page.getByRole('navigation', { name: 'Rooms' }).getByRole('link', { name: new RegExp(name) }).click();
  await u.page.getByRole('heading', { level: 2, name }).waitFor();
}

async function messageAction(u, text, action) {
  const m = message(u, text).first();
  await m.hover();
  await m.getByRole('button', { name: 'Message actions' }).click();
  await u.page.getByRole('menu', { name: 'Message actions' }).getByRole('menuitem', { name: action }).click();
}

/** The user's session as stored by the UI (for seeding data through the REST API). */
async function tokenOf(u) {
  return u.page.evaluate(() => JSON.parse(localStorage.getItem('hubbub.session')).access_token);
}

async function rest(u, method, path, body) {
  const token = await tokenOf(u);
  const res = await fetch(server.url + path, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

describe('hubbub web UI', () => {
  before(async () => {
    // A short access-token lifetime, so connection-token and REST refreshes happen in the run.
    server = await startServer({ accessTokenTtl: '20s' });
    ui = await uiFor(server.url);
    console.log(`# server ${server.url}; UI ${ui.url} (${ui.embedded ? 'embedded in hubbub' : 'test proxy over web/dist'})`);
    alice = await openBrowser('alice');
    bob = await openBrowser('bob');
    people.push(alice, bob);
  });

  after(async () => {
    for (const p of people) await p.close();
    await ui?.stop();
    await server?.stop();
    const errors = people.flatMap((p) => p.errors);
    if (errors.length) console.log(`# browser errors:\n${errors.join('\n')}`);
  });

  test('signs up and logs in, with server errors next to the field that caused them', async () => {
    await alice.page.goto(ui.url);
    await shoot(alice.page, '01-login');
    await alice.page.getByLabel('Username').fill('alice');
    await alice.page.getByLabel('Password').fill('short');
    await alice.page.getByRole('button', { name: 'Sign up' }).click();
    const pwError = alice.page.locator('#auth-password-error');
    await pwError.waitFor();
    assert.match(await pwError.innerText(), /password needs at least 8 characters/i);
    await alice.page.getByLabel('Password').fill(PASSWORD);
    await alice.page.getByRole('button', { name: 'Sign up' }).click();
    await alice.page.locator('.app[data-conn="connected"]').waitFor({ timeout: 20_000 });
    assert.equal(await alice.page.getByTestId('my-presence').innerText(), 'Online');
    firstToken = await tokenOf(alice);

    // Name taken: under Username. Wrong password: under Password.
    await bob.page.goto(ui.url);
    await bob.page.getByLabel('Username').fill('Alice');
    await bob.page.getByLabel('Password').fill(PASSWORD);
    await bob.page.getByRole('button', { name: 'Sign up' }).click();
    await bob.page.locator('#auth-username-error').waitFor();
    assert.match(await bob.page.locator('#auth-username-error').innerText(), /username Alice is taken/i);
    await bob.page.getByLabel('Username').fill('alice');
    await bob.page.getByLabel('Password').fill('not the password');
    await bob.page.getByRole('button', { name: 'Log in' }).click();
    await until(async () => /wrong username or password/i.test(await bob.page.locator('#auth-password-error').innerText()), 'wrong password error');
    await shoot(bob.page, '02-login-error');

    // Keyboard only: type, Tab, type, Tab to "Sign up", Enter.
    await bob.page.getByLabel('Username').fill('');
    await bob.page.getByLabel('Username').focus();
    await bob.page.keyboard.type('bob');
    await bob.page.keyboard.press('Tab');
    await bob.page.keyboard.press('Control+A');
    await bob.page.keyboard.type(PASSWORD);
    await bob.page.keyboard.press('Tab'); // hint text is not focusable: next is "Log in"
    await bob.page.keyboard.press('Tab');
    assert.equal(await bob.page.evaluate(() => document.activeElement?.textContent), 'Sign up');
    await bob.page.keyboard.press('Enter');
    await bob.page.locator('.app[data-conn="connected"]').waitFor({ timeout: 20_000 });
  });

  test('creates a room, invites by username (unknown names are reported), and chats both ways', async () => {
    await alice.page.getByRole('button', { name: 'New room' }).click();
    await alice.page.getByLabel('Room name').fill('Team');
    await alice.page.getByLabel('Invite people (optional)').fill('bob, nobody');
    await alice.page.getByRole('button', { name: 'Create room' }).click();
    const inviteError = alice.page.locator('#room-invite-error');
    await inviteError.waitFor();
    assert.match(await inviteError.innerText(), /there is no user named nobody/i);
    await shoot(alice.page, '03-new-room-error');
    await alice.page.getByLabel('Invite people (optional)').fill('');
    await alice.page.getByRole('button', { name: 'Invite', exact: true }).click();
    await alice.page.getByRole('heading', { level: 2, name: 'Team' }).waitFor();

    // Bob is told of the invitation and gets the room without reloading.
    await bob.page.getByRole('navigation', { name: 'Rooms' }).getByRole('link', { name: /Team/ }).waitFor();
    await send(alice, 'Hello bob!');
    await visible(alice, 'Hello bob!');
    // Bob's device received it (delivered), but he has not opened the room.
    await until(async () => (await tick(alice, 'Hello bob!')) === 'delivered', 'delivered tick');
    const badge = bob.page.getByRole('link', { name: /Team/ }).getByTestId('unread');
    await until(async () => (await badge.innerText()).startsWith('1'), 'unread badge 1');
    await shoot(bob.page, '04-room-list');

    await openRoom(bob, 'Team');
    await visible(bob, 'Hello bob!');
    await until(async () => (await tick(alice, 'Hello bob!')) === 'seen', 'seen tick');
    await send(bob, 'Hi alice');
    await visible(alice, 'Hi alice');

    // Shift+Enter makes a new line; Enter sends.
    const box = composer(bob);
    await box.click();
    await box.type('line one');
    await box.press('Shift+Enter');
    await box.type('line two');
    await box.press('Enter');
    await visible(alice, 'line two');
    assert.equal(await message(alice, 'line two').locator('.text').innerText(), 'line one\nline two');
    assert.equal(await composer(bob).inputValue(), '');
  });

  test('shows "bob is typing…" and clears it', async () => {
    const line = alice.page.getByTestId('typing');
    await composer(bob).click();
    await composer(bob).type('I am typ');
    await until(async () => (await line.innerText()) === 'bob is typing…', 'typing indicator');
    await shoot(alice.page, '05-conversation');
    await composer(bob).fill('');
    // No more typing events: it expires (5 s).
    await until(async () => (await line.innerText()) === '', 'typing indicator to clear', 10_000);
    // And a message from the typist clears it at once.
    await composer(bob).type('x');
    await until(async () => (await line.innerText()) !== '', 'typing again');
    await composer(bob).press('Enter');
    await visible(alice, /^x$/);
    assert.equal(await line.innerText(), '');
  });

  test('reacts, replies, edits and deletes', async () => {
    await messageAction(bob, 'Hello bob!', 'React with 👍');
    const chip = message(alice, 'Hello bob!').getByRole('button', { name: /👍 1/ });
    await chip.waitFor();

    await messageAction(bob, 'Hello bob!', 'Reply');
    await send(bob, 'replying to you');
    await visible(alice, 'replying to you');
    const quote = message(alice, 'replying to you').locator('.quote');
    assert.match(await quote.innerText(), /alice\s+Hello bob!/);

    await messageAction(alice, 'Hello bob!', 'Edit');
    await until(async () => (await composer(alice).inputValue()) === 'Hello bob!', 'the text to edit in the composer');
    await composer(alice).fill('Hello bob! (edited)');
    await composer(alice).press('Enter');
    await visible(bob, 'Hello bob! (edited)');
    assert.equal(await message(bob, 'Hello bob! (edited)').locator('.edited').innerText(), 'edited');

    await send(alice, 'oops, wrong room');
    await visible(bob, 'oops, wrong room');
    await messageAction(alice, 'oops, wrong room', 'Delete');
    await alice.page.getByRole('menuitem', { name: 'Delete', exact: true }).click();
    await visible(bob, 'This message was deleted');
    assert.equal(await message(bob, 'oops, wrong room').count(), 0);
  });

  test('reports a message that is too long next to it', async () => {
    await send(alice, 'y'.repeat(4001));
    const failed = alice.page.locator('article.msg.pending', { hasText: 'Not sent' });
    await failed.waitFor();
    assert.match(await failed.locator('.error').innerText(), /too long: 4001 characters, at most 4000/i);
    await shoot(alice.page, '06-too-long');
    await failed.getByRole('button', { name: 'Discard' }).click();
    assert.equal(await failed.count(), 0);
  });

  test('starts a DM, and shows presence', async () => {
    await alice.page.getByRole('button', { name: 'Direct message' }).click();
    await alice.page.getByLabel('Their username').fill('nobody');
    await alice.page.getByRole('button', { name: 'Start conversation' }).click();
    await alice.page.locator('#dm-username-error').waitFor();
    assert.match(await alice.page.locator('#dm-username-error').innerText(), /no user named nobody/i);
    await shoot(alice.page, '07-dm-error');
    await alice.page.getByLabel('Their username').fill('bob');
    await alice.page.getByRole('button', { name: 'Start conversation' }).click();
    await alice.page.getByRole('heading', { level: 2, name: 'bob' }).waitFor();
    await until(async () => (await alice.page.getByTestId('room-subtitle').innerText()) === 'online', 'bob online');
    await send(alice, 'psst, a DM');
    // Bob did not know this room: it appears with its message.
    const dm = bob.page.getByRole('navigation', { name: 'Rooms' }).getByRole('link', { name: /^alice/ });
    await dm.waitFor();
    await until(async () => /psst, a DM/.test(await dm.innerText()), 'DM preview');
  });

  test('keeps messages written offline as pending and sends each once on reconnect; missed ones arrive in order', async () => {
    await openRoom(bob, 'Team');
    await bob.context.setOffline(true);
    const banner = bob.page.getByTestId('connection-banner');
    await until(async () => /offline/i.test(await banner.innerText()), 'offline banner');
    // Alice sees bob go offline in their DM.
    await until(async () => /last seen/.test(await alice.page.getByTestId('room-subtitle').innerText()), 'bob last seen');

    await send(bob, 'written offline 1');
    await send(bob, 'written offline 2');
    await pendingMsg(bob, 'written offline 2').waitFor();
    assert.equal(await pendingMsg(bob, 'written offline 1').locator('.tick').getAttribute('data-status'), 'pending');
    const stored = await bob.page.evaluate(() =>
      Object.keys(localStorage)
        .filter((k) => k.startsWith('hubbub.pending.'))
        .flatMap((k) => JSON.parse(localStorage.getItem(k)).map((p) => p.text)),
    );
    assert.deepEqual(stored, ['written offline 1', 'written offline 2']);

    await openRoom(alice, 'Team');
    await send(alice, 'while you were away 1');
    await send(alice, 'while you were away 2');
    await visible(alice, 'while you were away 2');
    await shoot(bob.page, '08-offline-pending');
    assert.equal(await message(alice, 'written offline').count(), 0);

    const reloads = [];
    const onRequest = (r) => {
      if (/\/api\/rooms\/\d+\/messages/.test(r.url())) reloads.push(r.url());
    };
    bob.page.on('request', onRequest);
    await bob.context.setOffline(false);
    await until(async () => /reconnected/i.test(await banner.innerText()), 'reconnected banner');
    await shoot(bob.page, '09-reconnected');
    await visible(bob, 'while you were away 2');
    await visible(alice, 'written offline 2');
    await until(async () => (await pendingMsg(bob, 'written offline').count()) === 0, 'pending to clear');

    for (const u of [alice, bob]) {
      const all = await texts(u);
      const tail = all.filter((t) => /while you were away|written offline/.test(t));
      assert.deepEqual(
        tail,
        ['while you were away 1', 'while you were away 2', 'written offline 1', 'written offline 2'],
        `${u.name} sees each message once, in order`,
      );
    }
    const left = await bob.page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('hubbub.pending.')));
    assert.deepEqual(left, []);
    // The missed messages came by the SDK's recovery, not by reloading pages over REST.
    bob.page.off('request', onRequest);
    assert.deepEqual(reloads, []);
  });

  test('reloads the messages from REST when the missed ones cannot be recovered', async () => {
    await openRoom(bob, 'Team');
    await bob.context.setOffline(true);
    await until(async () => /offline/i.test(await bob.page.getByTestId('connection-banner').innerText()), 'offline banner');
    // A position from another epoch of the stream: the server answers recovered: false.
    const changed = await bob.page.evaluate(() => {
      let n = 0;
      for (const s of Object.values(window.hubbub.client.subscriptions())) {
        if (s.channel.startsWith('room:')) {
          s._epoch = 'not-this-epoch';
          n++;
        }
      }
      return n;
    });
    assert.ok(changed > 0);
    await send(alice, 'sent while recovery was impossible');
    await visible(alice, 'sent while recovery was impossible');
    const reloads = [];
    const onRequest = (r) => {
      if (/\/api\/rooms\/\d+\/messages\?limit=/.test(r.url())) reloads.push(r.url());
    };
    bob.page.on('request', onRequest);
    await bob.context.setOffline(false);
    await visible(bob, 'sent while recovery was impossible');
    bob.page.off('request', onRequest);
    assert.ok(reloads.length > 0, 'the latest page was read again from REST');
    assert.equal(await message(bob, 'sent while recovery was impossible').count(), 1);
    const all = await texts(bob);
    assert.equal(all.at(-1), 'sent while recovery was impossible');
  });

  test('keeps pending messages across a reload (localStorage) until a connection takes them', async () => {
    // Every real-time endpoint refused: the page loads (it is served) but cannot connect.
    let blocked = true;
    const p = bob.page;
    await p.routeWebSocket('**/connection/websocket', (ws) => (blocked ? ws.close() : ws.connectToServer()));
    await p.route(/\/connection\/(http_stream|sse)|\/emulation/, (r) => (blocked ? r.abort() : r.continue()));
    await p.reload();
    await until(async () => /connecting/i.test(await p.getByTestId('connection-banner').innerText()), 'connecting banner');
    await openRoom(bob, 'Team');
    await send(bob, 'survives a reload');
    await pendingMsg(bob, 'survives a reload').waitFor();
    await p.reload();
    await openRoom(bob, 'Team');
    await pendingMsg(bob, 'survives a reload').waitFor();
    assert.equal(await pendingMsg(bob, 'survives a reload').locator('.tick').getAttribute('data-status'), 'pending');
    blocked = false;
    await visible(alice, 'survives a reload', 30_000);
    await visible(bob, 'survives a reload');
    await until(async () => (await pendingMsg(bob, 'survives a reload').count()) === 0, 'pending to clear');
    assert.equal(await message(alice, 'survives a reload').count(), 1);
    await p.unrouteAll({ behavior: 'ignoreErrors' });
  });

  test('works over HTTP streaming and SSE when WebSocket is blocked', async () => {
    carol = await openBrowser('carol');
    people.push(carol);
    // page.route() does not see WebSocket handshakes; routeWebSocket() does: closing the
    // socket at once is what a proxy that blocks WebSocket looks like to the page.
    await carol.page.route('**/connection/websocket', (r) => r.abort());
    await carol.page.routeWebSocket('**/connection/websocket', (ws) => ws.close());
    await signUp(carol, 'carol');
    assert.equal(await carol.page.locator('.app').getAttribute('data-transport'), 'http_stream');

    await alice.page.getByRole('button', { name: 'Invite' }).click();
    await alice.page.getByLabel('Username to invite').fill('carol');
    await alice.page.getByRole('dialog').getByRole('button', { name: 'Invite', exact: true }).click();
    await alice.page.getByText('carol is now in the room.').waitFor();
    await shoot(alice.page, '10-invite');
    await alice.page.getByRole('dialog').getByRole('button', { name: 'Done' }).click();

    await openRoom(carol, 'Team');
    await visible(carol, 'while you were away 1');
    await send(carol, 'hello over http_stream');
    await visible(alice, 'hello over http_stream');
    await send(alice, 'welcome carol');
    await visible(carol, 'welcome carol');

    // Without HTTP streaming either: SSE.
    const page2 = await carol.context.newPage();
    await page2.routeWebSocket('**/connection/websocket', (ws) => ws.close());
    await page2.route('**/connection/http_stream', (r) => r.abort());
    await page2.goto(ui.url);
    await page2.locator('.app[data-conn="connected"]').waitFor({ timeout: 20_000 });
    assert.equal(await page2.locator('.app').getAttribute('data-transport'), 'sse');
    const sse = { ...carol, page: page2, name: 'carol-sse' };
    await openRoom(sse, 'Team');
    await send(sse, 'and now over sse');
    await visible(alice, 'and now over sse');
    await send(alice, 'sse reply');
    await visible(sse, 'sse reply');
    // Read receipts travel over SSE too (bob has the room open as well).
    await until(async () => (await tick(alice, 'sse reply')) === 'seen', 'seen over sse');
    await page2.close();
  });

  test('notifies mentions in the notifications panel', async () => {
    await send(bob, 'hey @alice, look at this');
    const bell = alice.page.getByRole('button', { name: /Notifications, 1 unread/ });
    await bell.waitFor();
    await bell.click();
    const panel = alice.page.getByRole('dialog', { name: 'Notifications' });
    await panel.getByText('bob mentioned you in Team').waitFor();
    await shoot(alice.page, '11-notifications');
    await panel.getByRole('button', { name: 'Mark all as read' }).click();
    await panel.getByText('All caught up').waitFor();
    await panel.getByRole('button', { name: 'Close' }).click();
    await alice.page.getByRole('button', { name: 'Notifications', exact: true }).waitFor();
  });

  test('searches messages and jumps to a hit', async () => {
    await alice.page.getByRole('searchbox', { name: 'Search messages' }).fill('away');
    await alice.page.getByRole('searchbox', { name: 'Search messages' }).press('Enter');
    const results = alice.page.getByRole('region', { name: /Search results/ });
    const hit = results.getByRole('link', { name: /while you were away 1/ });
    await hit.waitFor();
    assert.equal(await results.locator('mark').first().innerText(), 'away');
    await shoot(alice.page, '12-search');
    await hit.click();
    await alice.page.locator('article.msg.highlight', { hasText: 'while you were away 1' }).waitFor();
    await alice.page.getByRole('searchbox', { name: 'Search messages' }).press('Escape');
  });

  test('loads older history when scrolling up, keeping the view still', async () => {
    // Written before bob joins, so his browser has none of it until he scrolls.
    const room = await rest(alice, 'POST', '/api/rooms', { name: 'History' });
    for (let i = 1; i <= 130; i++) {
      const n = String(i).padStart(3, '0');
      await rest(alice, 'POST', `/api/rooms/${room.id}/messages`, { text: `history ${n}`, client_msg_id: `h${n}` });
    }
    await rest(alice, 'POST', `/api/rooms/${room.id}/members`, { username: 'bob' });
    await bob.page.getByRole('link', { name: /History/ }).waitFor();
    await openRoom(bob, 'History');
    await visible(bob, 'history 130');
    assert.equal(await message(bob, 'history 001').count(), 0, 'only the newest page at first');
    const list = bob.page.getByRole('log', { name: 'Messages' });
    for (let i = 0; i < 10 && (await message(bob, 'history 001').count()) === 0; i++) {
      const anchor = await bob.page.locator('article.msg[data-seq]').first().getAttribute('data-seq');
      await list.evaluate((el) => (el.scrollTop = 0));
      await until(async () => (await bob.page.locator('article.msg[data-seq]').first().getAttribute('data-seq')) !== anchor, 'an older page');
      // The message that was at the top is still in view (no jump to the top of the new page).
      const box = await bob.page.locator(`article.msg[data-seq="${anchor}"]`).boundingBox();
      const lbox = await list.boundingBox();
      assert.ok(box && lbox && box.y >= lbox.y - 5 && box.y < lbox.y + lbox.height, 'anchor message still visible');
    }
    await visible(bob, 'history 001');
    assert.equal(await bob.page.getByText('This is the beginning of “History”.').count(), 1);
    const all = (await texts(bob)).filter((t) => t.startsWith('history '));
    assert.equal(all.length, 130);
    assert.deepEqual(all, [...all].sort());
    // New messages at the bottom do not move what is being read.
    const top = await message(bob, 'history 001').boundingBox();
    await rest(alice, 'POST', `/api/rooms/${room.id}/messages`, { text: 'history new', client_msg_id: 'hnew' });
    await until(async () => (await bob.page.locator('article.msg[data-seq]').last().innerText()).includes('history new'), 'new message');
    const top2 = await message(bob, 'history 001').boundingBox();
    assert.equal(Math.round(top2.y), Math.round(top.y), 'no layout shift');
    await list.evaluate((el) => (el.scrollTop = 0));
    await shoot(bob.page, '13-history-top');
  });

  test('explains a room one is not a member of', async () => {
    const room = await rest(carol, 'POST', '/api/rooms', { name: 'Carol only' });
    await bob.page.goto(`${ui.url}/rooms/${room.id}`);
    const err = bob.page.getByRole('alert');
    await until(async () => /not a member of this room/i.test(await err.innerText()), 'not a member');
    await shoot(bob.page, '14-not-member');
    await bob.page.setViewportSize({ width: 390, height: 844 });
    assert.ok(await bob.page.getByRole('alert').isVisible(), 'the reason shows on a phone too');
    await bob.page.getByRole('button', { name: 'Back to conversations' }).click();
    await bob.page.getByRole('navigation', { name: 'Rooms' }).waitFor();
    await bob.page.setViewportSize(DESKTOP);
    await bob.page.goto(ui.url);
  });

  test('screens at desktop and phone sizes, light and dark', async () => {
    const p = alice.page;
    await p.setViewportSize(DESKTOP);
    const inTeam = async () => {
      if (!(await p.getByRole('heading', { level: 2, name: 'Team' }).isVisible())) await openRoom(alice, 'Team');
    };
    await openRoom(alice, 'Team');
    await shoot(p, '15-conversation', { phone: inTeam });
    // On a phone the list and the conversation are separate screens.
    await shoot(p, '16-room-list', {
      phone: () => p.getByRole('button', { name: 'Back to conversations' }).click(),
    });
    await openRoom(alice, 'Team');
    await messageAction(alice, 'welcome carol', 'Reply');
    await composer(alice).fill('a reply in progress');
    await shoot(p, '17-reply-composer', { phone: inTeam });
    await p.getByRole('button', { name: 'Cancel reply' }).click();
    await composer(alice).fill('');
    const m = message(alice, 'sse reply');
    await m.hover();
    await m.getByRole('button', { name: 'Message actions' }).click();
    await shoot(p, '18-message-menu');
    await p.keyboard.press('Escape');
    await p.getByRole('button', { name: /Your account/ }).click();
    await shoot(p, '19-account');
    await p.keyboard.press('Escape');
    await p.getByRole('dialog').waitFor({ state: 'detached' });

    await p.emulateMedia({ colorScheme: 'dark' });
    await shoot(p, '20-dark-conversation', { phone: inTeam });
    await p.getByRole('button', { name: 'New room' }).click();
    await shoot(p, '21-dark-new-room');
    await p.keyboard.press('Escape');
    await p.emulateMedia({ colorScheme: 'light' });
    await bob.page.emulateMedia({ colorScheme: 'dark' });
    await bob.page.goto(ui.url);
    await bob.page.locator('.app[data-conn="connected"]').waitFor();
    await shoot(bob.page, '22-dark-room-list');
  });

  test('refreshed the access token (20 s lifetime) without dropping the connection', async () => {
    assert.notEqual(await tokenOf(alice), firstToken, 'a refreshed token is stored');
    await alice.page.locator('.app[data-conn="connected"]').waitFor();
    await openRoom(bob, 'Team');
    await send(alice, 'still here after refreshes');
    await visible(bob, 'still here after refreshes');
  });

  test('had no script errors in any page', () => {
    const errors = people.flatMap((p) => p.errors);
    assert.deepEqual(errors, []);
  });
});
