// The server HTTP API driven by cent.js (npm), with a real centrifuge-js subscriber watching
// what the calls do. Run by scripts/test-api-clients.sh against a running hubbub
// (CENT_TEST_URL, CENT_TEST_API_KEY, CENT_TEST_TOKEN_SECRET).
//
// cent.js has every method but rpc and batch; its `pipeline` sends several commands in one
// request to `POST /api` (the older API, one JSON command per line), which hubbub serves.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { CentClient, CentException } from 'cent.js';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const URL = process.env.CENT_TEST_URL;
const API_KEY = process.env.CENT_TEST_API_KEY;
const SECRET = process.env.CENT_TEST_TOKEN_SECRET;
const cent = new CentClient({ url: `${URL}/api`, apiKey: API_KEY });

const b64url = (s) => Buffer.from(s).toString('base64url');
function token(sub) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }));
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

function channel() {
  return `js-${randomUUID().slice(0, 12)}`;
}

/** Resolves with the first event `name` of `emitter`, or rejects after 5 s. */
function next(emitter, name) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} within 5s`)), 5000);
    emitter.once(name, (ctx) => {
      clearTimeout(timer);
      resolve(ctx);
    });
  });
}

/** A connected centrifuge-js client of `user`, subscribed to `ch`. */
async function subscriber(user, ch) {
  const client = new Centrifuge(`${URL.replace('http', 'ws')}/connection/websocket`, {
    token: token(user),
    websocket: WebSocket,
  });
  const sub = client.newSubscription(ch);
  const subscribed = next(sub, 'subscribed');
  sub.subscribe();
  client.connect();
  await subscribed;
  return { client, sub };
}

test('publish with tags reaches the subscriber; history, presence, channels, info', async () => {
  const ch = channel();
  const { client, sub } = await subscriber('js-1', ch);
  try {
    const got = next(sub, 'publication');
    const r = await cent.publish({ channel: ch, data: { n: 1 }, tags: { kind: 'test' } });
    assert.equal(r.offset, 1);
    const p = await got;
    assert.deepEqual(p.data, { n: 1 });
    assert.deepEqual(p.tags, { kind: 'test' });

    const h = await cent.getHistory({ channel: ch, limit: 10 });
    assert.deepEqual(h.publications.map((x) => x.data), [{ n: 1 }]);
    const presence = await cent.getPresence({ channel: ch });
    assert.equal(Object.values(presence.presence)[0].user, 'js-1');
    const stats = await cent.getPresenceStats({ channel: ch });
    assert.deepEqual(stats, { num_clients: 1, num_users: 1 });
    const channels = await cent.getChannels({ pattern: ch });
    assert.equal(channels.channels[ch].num_clients, 1);
    const info = await cent.getInfo();
    assert.equal(info.nodes.length, 1);
    await cent.removeHistory({ channel: ch });
    assert.deepEqual((await cent.getHistory({ channel: ch, limit: 10 })).publications, []);
  } finally {
    client.disconnect();
  }
});

test('publish options: idempotency_key, skip_history, b64data; broadcast', async () => {
  const ch = channel();
  const first = await cent.publish({ channel: ch, data: { n: 1 }, idempotency_key: 'once' });
  const retry = await cent.publish({ channel: ch, data: { n: 1 }, idempotency_key: 'once' });
  assert.deepEqual(retry, first);
  assert.deepEqual(await cent.publish({ channel: ch, data: { n: 2 }, skip_history: true }), {});
  const b64data = Buffer.from(JSON.stringify({ n: 3 })).toString('base64');
  await cent.publish({ channel: ch, b64data });
  const h = await cent.getHistory({ channel: ch, limit: 10 });
  assert.deepEqual(h.publications.map((x) => x.data), [{ n: 1 }, { n: 3 }]);
  const other = channel();
  const b = await cent.broadcast({ channels: [ch, other], data: { all: true } });
  assert.deepEqual(b.responses.map((x) => x.result.offset), [3, 1]);
});

test('an unknown option is refused, never dropped', async () => {
  const ch = channel();
  // cent.js passes the body as given; the server refuses it (cent.js's CentException does not
  // keep the server's message: the raw answer below shows it names the field).
  await assert.rejects(cent.publish({ channel: ch, data: {}, skip_histroy: true }), CentException);
  assert.deepEqual((await cent.getHistory({ channel: ch, limit: 10 })).publications, []);
  const raw = await fetch(`${URL}/api/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY },
    body: JSON.stringify({ channel: ch, data: {}, skip_histroy: true }),
  });
  assert.equal(raw.status, 400);
  assert.match((await raw.json()).error.message, /unknown field `skip_histroy`/);
});

test('subscribe, unsubscribe, refresh and disconnect reach the user', async () => {
  const ch = channel();
  const { client } = await subscriber('js-2', ch);
  try {
    const extra = channel();
    const serverSub = next(client, 'subscribed');
    await cent.subscribe({ user: 'js-2', channel: extra });
    assert.equal((await serverSub).channel, extra);
    const serverUnsub = next(client, 'unsubscribed');
    await cent.unsubscribe({ user: 'js-2', channel: extra });
    assert.equal((await serverUnsub).channel, extra);
    await cent.refresh({ user: 'js-2', expire_at: Math.floor(Date.now() / 1000) + 3600 });
    const gone = next(client, 'disconnected');
    await cent.disconnect({ user: 'js-2', disconnect: { code: 4500, reason: 'bye' } });
    const ctx = await gone;
    assert.equal(ctx.code, 4500);
  } finally {
    client.disconnect();
  }
});

test('pipeline: several commands in one request, answered in order', async () => {
  const ch = channel();
  const results = await cent.pipeline([
    { method: 'publish', params: { channel: ch, data: { n: 1 } } },
    { method: 'publish', params: { channel: ch, data: { n: 2 } } },
    { method: 'history', params: { channel: ch, limit: 10 } },
    { method: 'info', params: {} },
  ]);
  assert.equal(results.length, 4);
  assert.deepEqual([results[0].offset, results[1].offset], [1, 2]);
  assert.deepEqual(results[2].publications.map((x) => x.data), [{ n: 1 }, { n: 2 }]);
  assert.equal(results[3].nodes.length, 1);
});
