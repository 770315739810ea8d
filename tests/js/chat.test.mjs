// The chat application (docs/CHAT.md) through the real centrifuge-js SDK.
//
// Three users sign up over REST, share a group room and a DM, talk both ways with
// `rpc('chat.send', ..)` (the access token is the connection token), type and send read
// receipts. One of them goes offline; messages arrive; the server is restarted on the same
// data dir (a new process); the user comes back and the SDK recovers every missed message in
// order (consecutive offsets, no duplicate, same epoch).
//
// Run: cargo build -p hubbub-server && cd tests/js && TRANSPORT=websocket node --test chat.test.mjs
// (the scenario works on every SDK transport: TRANSPORT=http_stream|sse|fallback).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compatTest, eventually, sleep, withTimeout } from './harness.mjs';

const PASSWORD = 'correct horse battery';
const WAIT = 5000;

// ---------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------

async function rest(srv, method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(srv.url + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT),
  });
  const text = await res.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
  return { status: res.status, body: parsed, text };
}

/** REST call that must answer `status`; resolves with the parsed body. */
async function restOk(srv, method, path, status, opts) {
  const r = await rest(srv, method, path, opts);
  if (r.status !== status) {
    throw new Error(`${method} ${path} ${JSON.stringify(opts?.body ?? '')} → HTTP ${r.status} ${r.text} (expected ${status})`);
  }
  return r.body;
}

async function signup(srv, username) {
  const b = await restOk(srv, 'POST', '/api/auth/signup', 201, { body: { username, password: PASSWORD } });
  assert.equal(b.user.username, username);
  assert.equal(typeof b.access_token, 'string');
  return { id: b.user.id, name: username, access: b.access_token, refresh: b.refresh_token };
}

// ---------------------------------------------------------------------------
// SDK helpers
// ---------------------------------------------------------------------------

let cmid = 0;

/** chat.send over the connection; resolves with the acknowledged message. */
async function chatSend(c, roomId, text) {
  const res = await withTimeout(
    c.centrifuge.rpc('chat.send', { room_id: roomId, text, client_msg_id: `js-${process.pid}-${++cmid}` }),
    WAIT, `${c.name} chat.send ${text}`);
  assert.equal(typeof res.data?.seq, 'number', `chat.send answers the message: ${JSON.stringify(res.data)}`);
  assert.equal(res.data.text, text);
  assert.equal(res.data.room_id, roomId);
  return res.data;
}

async function chatRpc(c, method, data) {
  const res = await withTimeout(c.centrifuge.rpc(method, data), WAIT, `${c.name} ${method}`);
  return res.data;
}

/** Subscribes `c` to `channel`; resolves with {sub, events, ctx} once subscribed. */
async function subscribe(c, channel, opts = {}) {
  const s = c.sub(channel, opts);
  const subscribed = s.events.next('subscribed', () => true, WAIT);
  s.sub.subscribe();
  const ctx = await subscribed;
  return { ...s, ctx };
}

const isStored = (p) => typeof p.offset === 'number' && p.offset > 0;
const isEphemeral = (p) => p.offset === undefined || p.offset === 0;

/** Waits for the next publication of `type` (taking it). */
function nextOfType(s, type, pred = () => true, timeout = WAIT) {
  return s.events.next('publication', (p) => p.data && p.data.type === type && pred(p), timeout);
}

/** The stored publications a subscription got, in order. */
function storedPubs(s) {
  return s.events.all('publication').filter(isStored);
}

/** Asserts the stored publications are strictly consecutive (no gap, no duplicate). */
function assertConsecutive(s, what) {
  const offsets = storedPubs(s).map((p) => p.offset);
  for (let i = 1; i < offsets.length; i++) {
    assert.equal(offsets[i], offsets[i - 1] + 1, `${what}: offsets must be consecutive, got ${JSON.stringify(offsets)}`);
  }
  return offsets;
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

compatTest('chat: three users, group + DM, typing, receipts, offline, server restart, recovery', async (ctx) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'hubbub-js-chat-data-'));
  const servers = [];
  try {
    const srv1 = await ctx.startServer({ data_dir: dataDir });
    servers.push(srv1);
    ctx.note(`data dir ${dataDir}`);

    // --- Accounts, a group room and a DM, over REST.
    const alice = await signup(srv1, 'alice');
    const bob = await signup(srv1, 'bob');
    const carol = await signup(srv1, 'carol');
    const group = await restOk(srv1, 'POST', '/api/rooms', 201, { token: alice.access, body: { name: 'Trio' } });
    assert.equal(group.kind, 'group');
    assert.equal(group.channel, `room:${group.id}`);
    for (const u of [bob, carol]) {
      await restOk(srv1, 'POST', `/api/rooms/${group.id}/members`, 200, { token: alice.access, body: { username: u.name } });
    }
    const dm = await restOk(srv1, 'POST', '/api/dms', 200, { token: alice.access, body: { username: 'bob' } });
    assert.equal(dm.kind, 'dm');
    const dmBack = await restOk(srv1, 'POST', '/api/dms', 200, { token: bob.access, body: { username: 'alice' } });
    assert.equal(dmBack.id, dm.id, 'the same pair gets the same DM from either side');
    const groupCh = `room:${group.id}`;
    const dmCh = `room:${dm.id}`;

    // --- Connect with the access tokens; subscribe to the rooms.
    const A = ctx.client({ server: srv1, token: alice.access, label: 'alice' });
    const B = ctx.client({ server: srv1, token: bob.access, label: 'bob' });
    const C = ctx.client({ server: srv1, token: carol.access, label: 'carol' });
    await Promise.all([A.connect(WAIT), B.connect(WAIT), C.connect(WAIT)]);
    const aGroup = await subscribe(A, groupCh);
    const aDm = await subscribe(A, dmCh);
    const bGroup = await subscribe(B, groupCh);
    const bDm = await subscribe(B, dmCh);
    const cGroup = await subscribe(C, groupCh);
    assert.equal(cGroup.ctx.recoverable, true, 'room channels are recoverable');
    assert.ok(cGroup.ctx.streamPosition && cGroup.ctx.streamPosition.epoch, 'stream position with an epoch');
    const epoch = cGroup.ctx.streamPosition.epoch;
    const groupStart = cGroup.ctx.streamPosition.offset; // the invitations are stored events

    // --- Messages both ways, over RPC.
    const m1 = await chatSend(A, group.id, 'hello everyone');
    assert.equal(m1.seq, groupStart + 1, 'the message takes the room\'s next seq');
    for (const s of [bGroup, cGroup]) {
      const p = await nextOfType(s, 'message', (x) => x.data.message.seq === m1.seq);
      assert.equal(p.offset, m1.seq, 'the offset of a room publication is the message seq');
      assert.equal(p.data.message.text, 'hello everyone');
      assert.equal(p.data.message.sender, 'alice');
    }
    const m2 = await chatSend(B, group.id, 'hi alice, hi carol');
    const m3 = await chatSend(C, group.id, 'hello from carol');
    await nextOfType(aGroup, 'message', (x) => x.data.message.seq === m3.seq);
    await nextOfType(cGroup, 'message', (x) => x.data.message.seq === m3.seq);
    assert.deepEqual([m2.seq, m3.seq], [m1.seq + 1, m1.seq + 2]);

    const d1 = await chatSend(B, dm.id, 'psst, alice');
    const p = await nextOfType(aDm, 'message', (x) => x.data.message.seq === d1.seq);
    assert.equal(p.data.message.sender, 'bob');
    const d2 = await chatSend(A, dm.id, 'yes, bob?');
    await nextOfType(bDm, 'message', (x) => x.data.message.seq === d2.seq);

    // A retry with the same client_msg_id returns the original and publishes nothing.
    const retry = await withTimeout(
      A.centrifuge.rpc('chat.send', { room_id: dm.id, text: 'yes, bob?', client_msg_id: d2.client_msg_id }),
      WAIT, 'retry');
    assert.equal(retry.data.seq, d2.seq, 'retry returns the original message');

    // --- Typing: ephemeral (no offset), to the other members.
    const typed = await chatRpc(C, 'chat.typing', { room_id: group.id });
    assert.ok(typed === undefined || typed === null || Object.keys(typed).length === 0, `chat.typing answers {}: ${JSON.stringify(typed)}`);
    for (const s of [aGroup, bGroup]) {
      const t = await nextOfType(s, 'typing', (x) => x.data.user_id === carol.id);
      assert.ok(isEphemeral(t), `typing has no offset: ${JSON.stringify(t)}`);
      assert.equal(t.data.username, 'carol');
      assert.equal(t.data.expires_ms, 5000);
    }

    // --- Read receipts: markers answered, pushed to the room as ephemeral events.
    const markers = await chatRpc(A, 'chat.mark', { room_id: dm.id, read_seq: d1.seq });
    assert.equal(markers.read_seq, d1.seq, JSON.stringify(markers));
    assert.equal(markers.user_id, alice.id);
    const receipt = await nextOfType(bDm, 'receipt', (x) => x.data.user_id === alice.id);
    assert.ok(isEphemeral(receipt), `receipt has no offset: ${JSON.stringify(receipt)}`);
    assert.equal(receipt.data.read_seq, d1.seq);
    const older = await chatRpc(A, 'chat.mark', { room_id: dm.id, read_seq: d1.seq - 1 });
    assert.equal(older.read_seq, d1.seq, 'an older marker never moves read back');
    await chatRpc(B, 'chat.mark', { room_id: group.id, read_seq: m3.seq });
    await nextOfType(aGroup, 'receipt', (x) => x.data.user_id === bob.id && x.data.read_seq === m3.seq);

    // --- Carol goes offline.
    const cLast = storedPubs(cGroup).at(-1).offset;
    assert.equal(cLast, m3.seq);
    const disconnected = C.events.next('disconnected', () => true, WAIT);
    C.centrifuge.disconnect();
    await disconnected;
    await eventually(async () => {
      const r = await srv1.apiOk('presence_stats', { channel: groupCh });
      return r.num_clients === 2;
    }, 'the server to drop carol\'s connection', WAIT);

    // --- Messages (and an edit) while she is away.
    const missed = [];
    const expectStored = (type, text, seq) => missed.push({ type, text, seq });
    const w1 = await chatSend(A, group.id, 'carol, are you there?');
    expectStored('message', w1.text, w1.seq);
    const w2 = await chatSend(B, group.id, 'she went offline');
    expectStored('message', w2.text, w2.seq);
    const w3 = await chatSend(A, group.id, 'let us restart the server');
    expectStored('message', w3.text, w3.seq);
    const edited = await chatRpc(B, 'chat.edit', { room_id: group.id, seq: w2.seq, text: 'she went offline (edited)' });
    assert.equal(edited.text, 'she went offline (edited)');
    expectStored('edit', edited.text, w2.seq);
    // The edit redacted the message's own event: it is recovered with the text as it now is.
    missed.find((m) => m.type === 'message' && m.seq === w2.seq).text = edited.text;
    await chatRpc(A, 'chat.typing', { room_id: group.id }); // ephemeral: not recovered
    await nextOfType(bGroup, 'message', (x) => x.data.message.seq === w3.seq);
    await nextOfType(bGroup, 'edit');

    // --- Restart: stop the process (SIGTERM), start a new one on the same address and data dir.
    const addr = srv1.addr;
    const aConnectedBefore = A.events.count('connected');
    const bConnectedBefore = B.events.count('connected');
    const stopped = await withTimeout(srv1.stop(), 10000, 'server 1 to stop');
    ctx.note(`server 1 stopped: ${JSON.stringify(stopped)}`);
    const srv2 = await ctx.startServer({ data_dir: dataDir, listen: addr });
    servers.push(srv2);

    // Alice and Bob's SDKs reconnect by themselves and resubscribe, recovering (nothing missed).
    await eventually(() => A.events.count('connected') > aConnectedBefore && B.events.count('connected') > bConnectedBefore,
      'alice and bob to reconnect to the restarted server', 10000);
    for (const s of [aGroup, bGroup]) {
      const sctx = await s.events.next('subscribed', (x) => x.wasRecovering, WAIT);
      assert.equal(sctx.recovered, true, `${s.events.label} recovered after the restart`);
      assert.equal(sctx.streamPosition.epoch, epoch, 'the epoch survives the restart');
    }

    // More messages after the restart, still while carol is away.
    const w4 = await chatSend(A, group.id, 'server is back');
    expectStored('message', w4.text, w4.seq);
    const w5 = await chatSend(B, group.id, 'and our history too');
    expectStored('message', w5.text, w5.seq);
    assert.equal(w4.seq, w3.seq + 2, 'seqs continue after the restart (the edit took one)');
    await nextOfType(aGroup, 'message', (x) => x.data.message.seq === w5.seq);

    // --- Carol comes back: every missed event, in order, once.
    const resubscribed = cGroup.events.next('subscribed', () => true, 10000);
    C.centrifuge.connect();
    const sctx = await resubscribed;
    assert.equal(sctx.wasRecovering, true, 'carol\'s resubscribe was recovering');
    assert.equal(sctx.recovered, true, 'carol\'s resubscribe recovered');
    assert.equal(sctx.streamPosition.epoch, epoch, 'same epoch as before the restart');
    const got = await cGroup.events.take('publication', missed.length, (x) => isStored(x) && x.offset > cLast, WAIT);
    assert.deepEqual(got.map((x) => x.offset), missed.map((_, i) => cLast + 1 + i), 'offsets of the recovered events');
    assert.deepEqual(got.map((x) => x.data.type), missed.map((m) => m.type), 'types of the recovered events');
    assert.deepEqual(got.map((x) => x.data.message.text), missed.map((m) => m.text), 'texts of the recovered events');
    assert.deepEqual(got.map((x) => x.data.message.seq), missed.map((m) => m.seq));

    // And live again.
    const live = await chatSend(B, group.id, 'welcome back, carol');
    const lp = await nextOfType(cGroup, 'message', (x) => x.data.message.seq === live.seq);
    assert.equal(lp.offset, cLast + missed.length + 1);
    await sleep(300);
    const cOffsets = assertConsecutive(cGroup, 'carol');
    assert.equal(cOffsets[0], m1.seq, 'carol saw the stream from the first message');
    assert.equal(cOffsets.at(-1), live.seq);
    assertConsecutive(aGroup, 'alice');
    assertConsecutive(bGroup, 'bob');
    assertConsecutive(aDm, 'alice dm');
    assertConsecutive(bDm, 'bob dm');

    // The room list agrees: at least everything after carol's own message is unread for her.
    const rooms = await restOk(srv2, 'GET', '/api/rooms', 200, { token: carol.access });
    const mine = rooms.find((r) => r.id === group.id);
    assert.ok(mine, `group in carol's rooms: ${JSON.stringify(rooms)}`);
    assert.equal(mine.last_seq, live.seq);
    const afterHers = [w1, w2, w3, w4, w5, live].length;
    assert.ok(mine.unread >= afterHers, `carol's unread count ${mine.unread} < ${afterHers}: ${JSON.stringify(mine)}`);
  } finally {
    for (const s of servers) await s.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}, { timeout: 60000 });
