// The protobuf protocol with centrifuge-js's own protobuf build (`centrifuge/build/protobuf`):
// over WebSocket (the SDK offers the `centrifuge-protobuf` subprotocol, binary frames) and
// over HTTP streaming (octet-stream bodies and a protobuf POST /emulation). centrifuge-js
// has no protobuf over SSE (its SseTransport is JSON only), so TRANSPORT=sse is refused here.
//
// Run: TRANSPORT=websocket|http_stream node --test protobuf.test.mjs   (run-all.mjs runs both)

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { compatTest, startServer, sleep, TRANSPORT, EXPECTED_TRANSPORT } from './harness.mjs';

if (!['websocket', 'http_stream'].includes(TRANSPORT)) {
  throw new Error(`protobuf.test.mjs runs on websocket or http_stream, not ${TRANSPORT}`);
}

let server;
before(async () => { server = await startServer(); });
after(async () => { if (server) await server.stop(); });

const t = (name, fn, opts = {}) => compatTest(name, fn, { getServer: () => server, ...opts });
let counter = 0;
const uniq = (prefix) => `${prefix}-pb-${process.pid}-${++counter}`;

const enc = (v) => new TextEncoder().encode(JSON.stringify(v));
const dec = (bytes) => JSON.parse(new TextDecoder().decode(bytes));
/** Bytes that are not JSON. */
const BINARY = Uint8Array.from([0, 1, 2, 254, 255, 10, 123]);

/** A connected protobuf client subscribed to `channel`. */
async function pbSubscribed(ctx, user, channel, subOpts = {}) {
  const c = ctx.client({ user, protobuf: true });
  const connected = await c.connect();
  assert.equal(connected.transport, EXPECTED_TRANSPORT);
  const s = c.sub(channel, subOpts);
  const subscribed = s.events.next('subscribed');
  s.sub.subscribe();
  return { c, ...s, ctx: await subscribed };
}

t('protobuf: the SDK connects, subscribes and gets its binary publication back byte for byte', async (ctx) => {
  const channel = uniq('chat:bin');
  const { c, sub, events } = await pbSubscribed(ctx, 'alice', channel, { recoverable: true });
  const got = events.next('publication');
  await sub.publish(BINARY);
  const p = await got;
  assert.ok(p.data instanceof Uint8Array, 'protobuf payloads are bytes');
  assert.deepEqual([...p.data], [...BINARY]);
  assert.equal(p.info.user, 'alice');
  assert.equal(p.offset, 1);

  // History, presence and its stats, RPC: the same answers as JSON, payloads as bytes.
  const history = await sub.history({ limit: 10 });
  assert.deepEqual([...history.publications[0].data], [...BINARY]);
  const presence = await sub.presence();
  assert.equal(presence.clients[c.id].user, 'alice');
  const stats = await sub.presenceStats();
  assert.deepEqual([stats.numClients, stats.numUsers], [1, 1]);
  const rpc = await c.centrifuge.rpc('echo', enc({ hello: 'pb' }));
  assert.deepEqual(dec(rpc.data), { hello: 'pb' });
  // A protocol error comes back as it does in JSON.
  await assert.rejects(c.centrifuge.rpc('no-such-method', enc({})), (e) => e.code === 104);
});

t('protobuf: JSON and protobuf clients share a channel', async (ctx) => {
  const channel = uniq('news');
  const pb = await pbSubscribed(ctx, 'pb-user', channel);
  const json = ctx.client({ user: 'json-user' });
  await json.connect();
  const js = json.sub(channel);
  const jsSubscribed = js.events.next('subscribed');
  js.sub.subscribe();
  await jsSubscribed;

  // JSON bytes from the protobuf client: the JSON client gets the value.
  let jsGot = js.events.next('publication');
  let pbGot = pb.events.next('publication');
  await pb.sub.publish(enc({ text: 'from protobuf' }));
  assert.deepEqual((await jsGot).data, { text: 'from protobuf' });
  assert.deepEqual(dec((await pbGot).data), { text: 'from protobuf' });

  // Non-JSON bytes: base64 in a string for the JSON client (docs/PROTOCOL.md).
  jsGot = js.events.next('publication');
  pbGot = pb.events.next('publication');
  await pb.sub.publish(BINARY);
  assert.equal((await jsGot).data, Buffer.from(BINARY).toString('base64'));
  assert.deepEqual([...(await pbGot).data], [...BINARY]);

  // The JSON client's and the server API's data reach the protobuf client as JSON text.
  pbGot = pb.events.next('publication');
  await js.sub.publish({ text: 'from json' });
  assert.deepEqual(dec((await pbGot).data), { text: 'from json' });
  pbGot = pb.events.next('publication');
  await server.apiOk('publish', { channel, data: { text: 'from api' } });
  assert.deepEqual(dec((await pbGot).data), { text: 'from api' });
});

t('protobuf: a reconnecting client recovers what it missed', async (ctx) => {
  const channel = uniq('chat:rec');
  const { c, events } = await pbSubscribed(ctx, 'bob', channel, { recoverable: true });
  const first = events.next('publication');
  await server.apiOk('publish', { channel, data: { n: 1 } });
  await first;
  c.centrifuge.disconnect();
  await server.apiOk('publish', { channel, data: { n: 2 } });
  await server.apiOk('publish', { channel, data: { n: 3 } });
  const resubscribed = events.next('subscribed');
  const recovered = [events.next('publication'), events.next('publication', (p) => p.offset === 3)];
  c.centrifuge.connect();
  const sub = await resubscribed;
  assert.equal(sub.recovered, true, 'recovered');
  assert.deepEqual((await Promise.all(recovered)).map((p) => dec(p.data).n), [2, 3]);
});

t('protobuf: a server-side disconnect reaches the SDK with its code', async (ctx) => {
  const c = ctx.client({ user: 'carol', protobuf: true });
  const connected = await c.connect();
  const disconnected = c.events.next('disconnected');
  await server.apiOk('disconnect', { user: 'carol', client: connected.client, disconnect: { code: 4501, reason: 'bye' } });
  const d = await disconnected;
  assert.equal(d.code, 4501);
  assert.equal(d.reason, 'bye');
  await sleep(200);
  assert.equal(c.centrifuge.state, 'disconnected');
});
