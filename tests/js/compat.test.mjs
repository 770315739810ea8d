// Compatibility of the Hubbub server with the real centrifuge-js SDK.
//
// The contract is docs/PROTOCOL.md. One server (default config of harness.mjs) serves
// most tests; tests that need other settings start their own. Every test uses its own
// channels. The transport comes from env TRANSPORT (default websocket; also http_stream,
// sse, and fallback = [websocket refused, http_stream, sse]).
//
// Run: cd tests/js && npm ci && npm test   (all transports; HUBBUB_BIN=path overrides the binary)
//      TRANSPORT=sse npm run test:one      (one transport)

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import {
  compatTest, startServer, connToken, subToken, nowSec, parsedFrames, rejection,
  eventually, sleep, withTimeout, TRANSPORT, EXPECTED_TRANSPORT, EMULATION, REFUSING_WS_PATH,
  WebSocket,
} from './harness.mjs';

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) await server.stop();
});

const getServer = () => server;
const t = (name, fn, opts = {}) => compatTest(name, fn, { getServer, ...opts });

let counter = 0;
const uniq = (prefix) => `${prefix}-${process.pid}-${++counter}`;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function apiPublish(channel, data, srv = server) {
  return srv.apiOk('publish', { channel, data });
}

// ---------------------------------------------------------------------------
// Connect
// ---------------------------------------------------------------------------

t('connect: connected event carries the client id', async (ctx) => {
  const c = ctx.client({ user: 'alice', tokenOpts: { info: { name: 'Alice' } } });
  const connecting = c.events.next('connecting');
  const connected = await c.connect();
  await connecting;
  assert.match(connected.client, UUID_RE, 'client id is a UUID');
  assert.equal(connected.transport, EXPECTED_TRANSPORT);
  assert.equal(c.centrifuge.state, 'connected');

  const sent = parsedFrames(c, '>').find((f) => f.connect);
  assert.ok(sent, 'SDK sent a connect command');
  const reply = parsedFrames(c, '<').find((f) => f.id === sent.id);
  assert.ok(reply && reply.connect, `connect reply for id ${sent.id}`);
  assert.equal(reply.connect.client, connected.client);
  assert.equal(typeof reply.connect.version, 'string');
  assert.equal(reply.connect.ping, 25, 'ping interval in seconds');
  assert.equal(reply.connect.pong, true);
  assert.match(reply.connect.session, UUID_RE);
  assert.equal(typeof reply.connect.node, 'string');
  assert.ok(!('expires' in reply.connect) || reply.connect.expires === false, 'no expires without exp');
});

t('connect: two connections get distinct client ids', async (ctx) => {
  const a = ctx.client({ user: 'alice' });
  const b = ctx.client({ user: 'alice' });
  const [ca, cb] = await Promise.all([a.connect(), b.connect()]);
  assert.notEqual(ca.client, cb.client);
});

t('connect: no token and anonymous not allowed → disconnected with code 101', async (ctx) => {
  const c = ctx.client({});
  c.centrifuge.connect();
  const d = await c.events.next('disconnected');
  assert.equal(d.code, 101, `disconnect code (reason ${JSON.stringify(d.reason)})`);
  assert.equal(c.centrifuge.state, 'disconnected');
  assert.equal(c.events.count('connected'), 0);
});

t('connect: wrongly signed token → disconnected with 3500 "invalid token", no reconnect', async (ctx) => {
  const c = ctx.client({ token: connToken('alice', { secret: 'not-the-secret' }) });
  c.centrifuge.connect();
  const d = await c.events.next('disconnected');
  assert.equal(d.code, 3500);
  assert.equal(d.reason, 'invalid token');
  await sleep(400);
  assert.equal(c.centrifuge.state, 'disconnected');
  assert.equal(parsedFrames(c, '>').filter((f) => f.connect).length, 1, 'SDK did not retry');
});

t('connect: malformed token → disconnected with 3500', async (ctx) => {
  const c = ctx.client({ token: 'not.a.jwt' });
  c.centrifuge.connect();
  const d = await c.events.next('disconnected');
  assert.equal(d.code, 3500);
});

t('connect: expired token without getToken → error 109, then SDK gives up', async (ctx) => {
  const c = ctx.client({ token: connToken('alice', { exp: nowSec() - 60 }) });
  c.centrifuge.connect();
  const err = await c.events.next('error', (e) => e.type === 'connect');
  assert.equal(err.error.code, 109);
  const d = await c.events.next('disconnected');
  assert.equal(d.code, 1, 'SDK: unauthorized (no getToken to refresh with)');
  assert.equal(c.events.count('connected'), 0);
});

t('connect: expired token → 109, SDK fetches a new token with getToken and connects', async (ctx) => {
  let calls = 0;
  const c = ctx.client({
    token: connToken('alice', { exp: nowSec() - 60 }),
    getToken: async () => { calls++; return connToken('alice', { ttl: 3600 }); },
  });
  const connected = await c.connect();
  assert.match(connected.client, UUID_RE);
  assert.equal(calls, 1);
  const errors = c.events.all('error').filter((e) => e.type === 'connect');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].error.code, 109);
});

t('connect: getToken only (no initial token)', async (ctx) => {
  let calls = 0;
  const c = ctx.client({ getToken: async () => { calls++; return connToken('alice'); } });
  await c.connect();
  assert.equal(calls, 1);
});

t('connect: anonymous allowed → connects without token as user ""', async (ctx) => {
  const srv = await ctx.startServer({ auth: { allow_anonymous: true } });
  const c = ctx.client({ server: srv });
  await c.connect();
  const ch = uniq('anon');
  const s = c.sub(ch);
  s.sub.subscribe();
  await s.events.next('subscribed');
  const p = await s.sub.presence();
  assert.ok(p.clients[c.id], 'anonymous client in presence');
  assert.ok(!p.clients[c.id].user, `user is empty: ${JSON.stringify(p.clients[c.id].user)}`);
});

t('connect: heartbeat pings answered, connection stays up (ping_interval 1s)', async (ctx) => {
  const srv = await ctx.startServer({ client: { ping_interval: '1s', pong_timeout: '500ms' } });
  const c = ctx.client({ user: 'alice', server: srv });
  await c.connect();
  const reply = parsedFrames(c, '<').find((f) => f.connect);
  assert.equal(reply.connect.ping, 1);
  assert.equal(reply.connect.pong, true);
  await sleep(3600);
  assert.equal(c.centrifuge.state, 'connected');
  assert.equal(c.events.count('disconnected'), 0);
  assert.equal(c.events.count('connecting'), 1, 'only the initial connecting');
  const pings = parsedFrames(c, '<').filter((f) => Object.keys(f).length === 0).length;
  const pongs = parsedFrames(c, '>').filter((f) => Object.keys(f).length === 0).length;
  assert.ok(pings >= 2, `server sent ${pings} pings in 3.6 s`);
  assert.ok(pongs >= 2, `SDK answered ${pongs} pongs`);
  const r = await c.centrifuge.rpc('echo', { still: 'alive' });
  assert.deepEqual(r.data, { still: 'alive' });
}, { timeout: 20000 });

t('connect: subscriptions made before connect go out batched with connect', async (ctx) => {
  const c = ctx.client({ user: 'alice' });
  const subs = [uniq('batch'), uniq('batch'), uniq('batch')].map((ch) => c.sub(ch));
  for (const s of subs) s.sub.subscribe();
  await c.connect();
  await Promise.all(subs.map((s) => s.events.next('subscribed')));
  const multi = c.frames.some((f) => f.dir === '>' && f.data.trim().split('\n').length > 1);
  ctx.note(`a multi-command frame was sent: ${multi}`);
  const r = await apiPublish(subs[2].sub.channel, { n: 1 });
  const pub = await subs[2].events.next('publication');
  assert.equal(pub.offset, r.offset);
});

// ---------------------------------------------------------------------------
// Subscribe / publish
// ---------------------------------------------------------------------------

t('publish: client publication reaches another subscribed client', async (ctx) => {
  const ch = uniq('room');
  const a = await ctx.subscribed('alice', ch);
  const b = await ctx.subscribed('bob', ch);
  const res = await a.sub.publish({ text: 'hello', n: 1 });
  assert.deepEqual(res, {});
  const pub = await b.events.next('publication');
  assert.equal(pub.channel, ch);
  assert.deepEqual(pub.data, { text: 'hello', n: 1 });
  assert.equal(typeof pub.offset, 'number', 'history on: publication has an offset');
  assert.ok(pub.offset > 0);
  const own = await a.events.next('publication');
  assert.deepEqual(own.data, { text: 'hello', n: 1 });
});

t('publish: client publication carries the publisher info (user, client, conn_info)', async (ctx) => {
  const ch = uniq('room');
  const a = await ctx.subscribed('alice', ch, {}, { tokenOpts: { info: { name: 'Alice' } } });
  const b = await ctx.subscribed('bob', ch);
  await a.c.centrifuge.publish(ch, { text: 'with info' });
  const pub = await b.events.next('publication');
  assert.ok(pub.info, 'publication has info');
  assert.equal(pub.info.user, 'alice');
  assert.equal(pub.info.client, a.c.id);
  assert.deepEqual(pub.info.connInfo, { name: 'Alice' });
});

t('publish: order of many client publications is kept', async (ctx) => {
  const ch = uniq('order');
  const a = await ctx.subscribed('alice', ch);
  const b = await ctx.subscribed('bob', ch);
  const N = 30;
  // Over an emulation transport every command is its own POST /emulation, and parallel
  // HTTP requests may reach the server in any order: batch them into one request, whose
  // order the server must keep (as it keeps the order of one WebSocket's frames).
  if (EMULATION) a.c.centrifuge.startBatching();
  const done = Promise.all(Array.from({ length: N }, (_, i) => a.sub.publish({ i })));
  if (EMULATION) a.c.centrifuge.stopBatching();
  await done;
  if (EMULATION) {
    const posts = parsedFrames(a.c, '>').filter((f) => f.publish).length;
    assert.equal(posts, N, 'all publish commands sent');
  }
  const pubs = await b.events.take('publication', N);
  assert.deepEqual(pubs.map((p) => p.data.i), Array.from({ length: N }, (_, i) => i));
  const offsets = pubs.map((p) => p.offset);
  for (let i = 1; i < N; i++) assert.equal(offsets[i], offsets[i - 1] + 1, 'offsets consecutive');
});

t('publish: server API publication reaches all subscribers with its offset', async (ctx) => {
  const ch = uniq('api');
  const a = await ctx.subscribed('alice', ch);
  const b = await ctx.subscribed('bob', ch);
  const r = await apiPublish(ch, { from: 'api' });
  assert.equal(typeof r.offset, 'number');
  assert.equal(typeof r.epoch, 'string');
  assert.ok(r.epoch.length > 0);
  for (const s of [a, b]) {
    const pub = await s.events.next('publication');
    assert.deepEqual(pub.data, { from: 'api' });
    assert.equal(pub.offset, r.offset);
    assert.equal(pub.channel, ch);
  }
  const status = await server.api('publish', { channel: ch, data: { second: true } });
  assert.equal(status.status, 200);
  assert.equal(status.body.result.offset, r.offset + 1);
  assert.equal(status.body.result.epoch, r.epoch);
});

t('publish: server API broadcast reaches subscribers of every channel', async (ctx) => {
  const ch1 = uniq('bc');
  const ch2 = uniq('bc');
  const a = await ctx.subscribed('alice', ch1);
  const b = await ctx.subscribed('bob', ch2);
  const r = await server.apiOk('broadcast', { channels: [ch1, ch2], data: { all: 1 } });
  assert.equal(r.responses.length, 2);
  assert.deepEqual((await a.events.next('publication')).data, { all: 1 });
  assert.deepEqual((await b.events.next('publication')).data, { all: 1 });
});

t('publish: namespace with allow_publish_for_client=false → error 103', async (ctx) => {
  const ch = `ro:${uniq('x')}`;
  const a = await ctx.subscribed('alice', ch);
  const err = await rejection(a.sub.publish({ no: 1 }), 'publish to ro namespace');
  assert.equal(err.code, 103);
  // Still connected and subscribed.
  assert.equal(a.sub.state, 'subscribed');
  assert.equal(a.c.centrifuge.state, 'connected');
});

t('subscribe: subscribed context of a plain subscription', async (ctx) => {
  const ch = `chat:${uniq('plain')}`;
  const a = await ctx.subscribed('alice', ch);
  assert.equal(a.ctx.channel, ch);
  assert.equal(a.ctx.recoverable, false);
  assert.equal(a.ctx.wasRecovering, false);
  assert.equal(a.ctx.recovered, false);
  assert.equal(a.sub.state, 'subscribed');
});

t('subscribe: unsubscribe stops publications', async (ctx) => {
  // chat: no forced recovery, so the resubscribe below does not recover what it missed.
  const ch = `chat:${uniq('unsub')}`;
  const a = await ctx.subscribed('alice', ch);
  const unsubP = a.events.next('unsubscribed');
  a.sub.unsubscribe();
  const u = await unsubP;
  assert.equal(u.code, 0);
  // Wait for the server to process the unsubscribe: channel count drops.
  await eventually(async () => {
    const r = await server.apiOk('presence_stats', { channel: ch });
    return r.num_clients === 0;
  }, 'presence of the channel to drop to 0');
  await apiPublish(ch, { late: true });
  await sleep(300);
  assert.equal(a.events.count('publication'), 0);
  // And resubscribe works.
  a.sub.subscribe();
  await a.events.next('subscribed');
  await apiPublish(ch, { again: true });
  assert.deepEqual((await a.events.next('publication')).data, { again: true });
});

// ---------------------------------------------------------------------------
// Presence / history
// ---------------------------------------------------------------------------

t('presence: presence and presenceStats of subscribers', async (ctx) => {
  const ch = uniq('pres');
  const a1 = await ctx.subscribed('alice', ch, {}, { tokenOpts: { info: { name: 'Alice' } } });
  const a2 = await ctx.subscribed('alice', ch);
  const b = await ctx.subscribed('bob', ch);

  const p = await a1.sub.presence();
  const ids = Object.keys(p.clients).sort();
  assert.deepEqual(ids, [a1.c.id, a2.c.id, b.c.id].sort());
  assert.equal(p.clients[a1.c.id].user, 'alice');
  assert.equal(p.clients[a1.c.id].client, a1.c.id);
  assert.deepEqual(p.clients[a1.c.id].connInfo, { name: 'Alice' });
  assert.equal(p.clients[b.c.id].user, 'bob');

  const st = await b.sub.presenceStats();
  assert.deepEqual(st, { numClients: 3, numUsers: 2 });

  const api = await server.apiOk('presence', { channel: ch });
  assert.deepEqual(Object.keys(api.presence).sort(), ids);
  const apiStats = await server.apiOk('presence_stats', { channel: ch });
  assert.equal(apiStats.num_clients, 3);
  assert.equal(apiStats.num_users, 2);

  b.sub.unsubscribe();
  await b.events.next('unsubscribed');
  await eventually(async () => {
    const s = await a1.sub.presenceStats();
    return s.numClients === 2 && s.numUsers === 1;
  }, 'presence stats after bob unsubscribed');
});

t('presence: not subscribed → 103; presence off in namespace → 108', async (ctx) => {
  const c = ctx.client({ user: 'alice' });
  await c.connect();
  const e1 = await rejection(c.centrifuge.presence(uniq('notsub')), 'presence of a channel not subscribed');
  assert.equal(e1.code, 103);
  const ch = `bare:${uniq('x')}`;
  const s = c.sub(ch);
  s.sub.subscribe();
  await s.events.next('subscribed');
  const e2 = await rejection(s.sub.presence(), 'presence with presence off');
  assert.equal(e2.code, 108);
  const e3 = await rejection(s.sub.history({ limit: 10 }), 'history with history off');
  assert.equal(e3.code, 108);
});

t('history: limit, reverse, since and position', async (ctx) => {
  const ch = uniq('hist');
  const a = await ctx.subscribed('alice', ch);
  const sent = [];
  for (let n = 1; n <= 5; n++) sent.push(await apiPublish(ch, { n }));
  const epoch = sent[0].epoch;
  const offs = sent.map((r) => r.offset);
  await a.events.take('publication', 5);

  const pos = await a.sub.history();
  assert.equal(pos.publications.length, 0, 'no limit: position only');
  assert.equal(pos.offset, offs[4]);
  assert.equal(pos.epoch, epoch);

  const first2 = await a.sub.history({ limit: 2 });
  assert.deepEqual(first2.publications.map((p) => p.data.n), [1, 2]);
  assert.deepEqual(first2.publications.map((p) => p.offset), offs.slice(0, 2));
  assert.equal(first2.offset, offs[4]);
  assert.equal(first2.epoch, epoch);

  const last2 = await a.sub.history({ limit: 2, reverse: true });
  assert.deepEqual(last2.publications.map((p) => p.data.n), [5, 4]);

  const all = await a.sub.history({ limit: -1 });
  assert.deepEqual(all.publications.map((p) => p.data.n), [1, 2, 3, 4, 5]);

  const since = await a.sub.history({ since: { offset: offs[1], epoch }, limit: 10 });
  assert.deepEqual(since.publications.map((p) => p.data.n), [3, 4, 5]);

  const sinceTop = await a.sub.history({ since: { offset: offs[4], epoch }, limit: 10 });
  assert.equal(sinceTop.publications.length, 0);

  const bad = await rejection(a.sub.history({ since: { offset: offs[1], epoch: 'wrong-epoch' }, limit: 10 }),
    'history since with a wrong epoch');
  assert.equal(bad.code, 112);

  const api = await server.apiOk('history', { channel: ch, limit: -1 });
  assert.deepEqual(api.publications.map((p) => p.data.n), [1, 2, 3, 4, 5]);
  assert.equal(api.epoch, epoch);
});

t('history: client publications are kept too', async (ctx) => {
  const ch = uniq('hist');
  const a = await ctx.subscribed('alice', ch);
  await a.sub.publish({ mine: 1 });
  await a.sub.publish({ mine: 2 });
  const h = await a.sub.history({ limit: 10 });
  assert.deepEqual(h.publications.map((p) => p.data.mine), [1, 2]);
});

// ---------------------------------------------------------------------------
// Join / leave
// ---------------------------------------------------------------------------

t('join/leave: only to subscribers that asked joinLeave', async (ctx) => {
  const ch = uniq('jl');
  const a = await ctx.subscribed('alice', ch, { joinLeave: true });
  const quiet = await ctx.subscribed('carol', ch);
  const b = await ctx.subscribed('bob', ch, {}, { tokenOpts: { info: { name: 'Bob' } } });

  const j = await a.events.next('join', (e) => e.info.user === 'bob');
  assert.equal(j.channel, ch);
  assert.equal(j.info.client, b.c.id);
  assert.deepEqual(j.info.connInfo, { name: 'Bob' });

  b.sub.unsubscribe();
  const l = await a.events.next('leave', (e) => e.info.user === 'bob');
  assert.equal(l.info.client, b.c.id);

  // A disconnect leaves too.
  const d = await ctx.subscribed('dave', ch);
  await a.events.next('join', (e) => e.info.user === 'dave');
  d.c.centrifuge.disconnect();
  const l2 = await a.events.next('leave', (e) => e.info.user === 'dave');
  assert.equal(l2.info.client, d.c.id);

  await sleep(200);
  assert.equal(quiet.events.count('join'), 0, 'carol did not ask for join/leave');
  assert.equal(quiet.events.count('leave'), 0);
});

// ---------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------

/**
 * A subscribed with `subOpts` on `ch`; 2 publications before, `missed` while A is
 * away (`goAway` / `comeBack`), 1 after. A must get all in order exactly once and a
 * `subscribed` context saying it recovered.
 */
async function recoveryScenario(ctx, ch, subOpts, clientOpts, goAway, comeBack) {
  const a = await ctx.subscribed('alice', ch, subOpts, clientOpts);
  assert.equal(a.ctx.recoverable, true, 'first subscribe: recoverable');
  assert.ok(a.ctx.streamPosition, 'first subscribe: stream position given');
  assert.equal(a.ctx.wasRecovering, false);
  const firstEpoch = a.ctx.streamPosition.epoch;

  let n = 0;
  const publish = async () => { n++; return apiPublish(ch, { n }); };
  await publish();
  await publish();
  await a.events.take('publication', 2);

  await goAway(a);
  const missed = 5;
  for (let i = 0; i < missed; i++) await publish();
  await comeBack(a);

  const sctx = await a.events.next('subscribed');
  assert.equal(sctx.wasRecovering, true, 'resubscribe was recovering');
  assert.equal(sctx.recovered, true, 'resubscribe recovered');
  assert.equal(sctx.streamPosition.epoch, firstEpoch);

  const recovered = await a.events.take('publication', missed);
  await publish();
  const live = await a.events.next('publication');
  await sleep(200);
  const all = a.events.all('publication').map((p) => p.data.n);
  assert.deepEqual(all, Array.from({ length: n }, (_, i) => i + 1), 'every publication once, in order');
  assert.deepEqual(recovered.map((p) => p.data.n), [3, 4, 5, 6, 7]);
  assert.equal(live.data.n, 8);
  const offsets = a.events.all('publication').map((p) => p.offset);
  for (let i = 1; i < offsets.length; i++) assert.equal(offsets[i], offsets[i - 1] + 1);
  return a;
}

const disconnectThenConnect = {
  goAway: async (a) => {
    const d = a.c.events.next('disconnected');
    a.c.centrifuge.disconnect();
    await d;
    // The server must have dropped the connection before the missed publications.
    await eventually(async () => {
      const r = await server.apiOk('presence_stats', { channel: a.sub.channel });
      return r.num_clients === 0;
    }, 'server to drop the disconnected client');
  },
  comeBack: async (a) => { a.c.centrifuge.connect(); },
};

t('recovery: disconnect()/connect() recovers missed publications in order', async (ctx) => {
  await recoveryScenario(ctx, uniq('rec'), { recoverable: true }, {},
    disconnectThenConnect.goAway, disconnectThenConnect.comeBack);
});

t('recovery: recoverable option honoured in a namespace without force_recovery', async (ctx) => {
  await recoveryScenario(ctx, `chat:${uniq('rec')}`, { recoverable: true }, {},
    disconnectThenConnect.goAway, disconnectThenConnect.comeBack);
});

t('recovery: transport drop, SDK reconnects by itself and recovers', async (ctx) => {
  await recoveryScenario(ctx, uniq('drop'), { recoverable: true },
    { minReconnectDelay: 1500, maxReconnectDelay: 2000 },
    async (a) => {
      const connecting = a.c.events.next('connecting', (e) => e.code !== 0);
      a.c.dropTransport();
      await connecting;
      await eventually(async () => {
        const r = await server.apiOk('presence_stats', { channel: a.sub.channel });
        return r.num_clients === 0;
      }, 'server to notice the dropped transport', 1400, 20);
    },
    async () => { /* the SDK reconnects after minReconnectDelay */ });
}, { timeout: 20000 });

t('recovery: a backlog larger than one answer arrives in pieces, every publication once, in order', async (ctx) => {
  // Answers of at most 2 KB: 60 missed publications of ~500 bytes take a dozen pieces.
  const srv = await ctx.startServer({ client: { max_answer_bytes: 2048 } });
  const ch = uniq('pieces');
  const a = await ctx.subscribed('alice', ch, { recoverable: true }, { server: srv });
  let n = 0;
  const filler = 'p'.repeat(500);
  const publish = async () => { n++; return apiPublish(ch, { n, filler }, srv); };
  await publish();
  await a.events.take('publication', 1);
  await disconnectFrom(srv, a);
  for (let i = 0; i < 60; i++) await publish();
  a.c.centrifuge.connect();
  const sctx = await a.events.next('subscribed');
  assert.equal(sctx.recovered, true, 'resubscribe recovered');
  await a.events.take('publication', 60, () => true, 8000);
  await publish();
  await a.events.next('publication');
  await sleep(200);
  const all = a.events.all('publication').map((p) => p.data.n);
  assert.deepEqual(all, Array.from({ length: n }, (_, i) => i + 1), 'every publication once, in order');
  const reply = parsedFrames(a.c, '<').find((f) => f.subscribe && f.subscribe.was_recovering);
  assert.ok(reply.subscribe.publications.length < 60, 'the reply carried only what fits');
}, { timeout: 20000 });

/** Disconnects the client and waits until the server `srv` dropped it. */
async function disconnectFrom(srv, a) {
  const d = a.c.events.next('disconnected');
  a.c.centrifuge.disconnect();
  await d;
  await eventually(async () => {
    const r = await srv.apiOk('presence_stats', { channel: a.sub.channel });
    return r.num_clients === 0;
  }, 'server to drop the disconnected client');
}

t('recovery: wrong epoch → subscribed with wasRecovering and not recovered', async (ctx) => {
  const ch = uniq('epoch');
  await apiPublish(ch, { n: 1 });
  await apiPublish(ch, { n: 2 });
  const a = await ctx.subscribed('alice', ch, { since: { offset: 1, epoch: 'not-the-epoch' } });
  assert.equal(a.ctx.wasRecovering, true);
  assert.equal(a.ctx.recovered, false);
  await sleep(200);
  assert.equal(a.events.count('publication'), 0, 'no publications delivered for a failed recovery');
});

t('recovery: since position in the same epoch delivers what follows it', async (ctx) => {
  const ch = uniq('since');
  const r1 = await apiPublish(ch, { n: 1 });
  await apiPublish(ch, { n: 2 });
  await apiPublish(ch, { n: 3 });
  const a = await ctx.subscribed('alice', ch, { since: { offset: r1.offset, epoch: r1.epoch } });
  assert.equal(a.ctx.wasRecovering, true);
  assert.equal(a.ctx.recovered, true);
  const pubs = await a.events.take('publication', 2);
  assert.deepEqual(pubs.map((p) => p.data.n), [2, 3]);
});

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

t('token refresh: connection outlives its first token via getToken + refresh', async (ctx) => {
  const firstExp = nowSec() + 2;
  let calls = 0;
  const c = ctx.client({
    token: connToken('alice', { exp: firstExp }),
    // A realistic getToken: a round trip to the app backend. centrifuge-js asks for
    // the new token `ttl` seconds after the connect reply, so the refresh reaches the
    // server shortly after the first token's exp; the connection must survive that.
    getToken: async () => { calls++; await sleep(300); return connToken('alice', { ttl: 3600 }); },
  });
  const connected = await c.connect();
  const reply = parsedFrames(c, '<').find((f) => f.connect);
  assert.equal(reply.connect.expires, true);
  assert.equal(typeof reply.connect.ttl, 'number');
  assert.ok(reply.connect.ttl > 0 && reply.connect.ttl <= 2, `ttl ${reply.connect.ttl}`);

  // Until well past the first token's expiry.
  await sleep(firstExp * 1000 - Date.now() + 2500);
  const closes = c.events.all('connecting').filter((e) => e.code !== 0);
  assert.deepEqual(closes, [], `connection closed ${closes.length ? `(at +${c.frames.find((f) => f.data.startsWith('[close'))?.t - firstExp * 1000} ms after exp) ` : ''}while the SDK was refreshing its token`);
  assert.equal(calls, 1, 'getToken called once for the refresh');
  const refreshCmd = parsedFrames(c, '>').find((f) => f.refresh);
  assert.ok(refreshCmd, 'SDK sent a refresh command');
  const refreshReply = parsedFrames(c, '<').find((f) => f.id === refreshCmd.id);
  assert.ok(refreshReply && refreshReply.refresh, `refresh reply: ${JSON.stringify(refreshReply)}`);
  assert.equal(refreshReply.refresh.expires, true);
  assert.ok(refreshReply.refresh.ttl > 3000);
  assert.equal(c.events.count('disconnected'), 0, 'never disconnected');
  assert.equal(c.events.count('connecting'), 1, 'never reconnected');
  assert.equal(c.centrifuge.state, 'connected');
  const r = await c.centrifuge.rpc('echo', { after: 'refresh' });
  assert.deepEqual(r.data, { after: 'refresh' });
  assert.equal(c.id, connected.client);
}, { timeout: 15000 });

t('token refresh: connection expires without refresh → server closes it (3005)', async (ctx) => {
  // getToken never answers in time: no refresh reaches the server.
  const srv = await ctx.startServer({ client: { expired_close_delay: '1s' } });
  const firstExp = nowSec() + 1;
  const c = ctx.client({
    server: srv,
    token: connToken('alice', { exp: firstExp }),
    getToken: () => new Promise(() => {}),
  });
  await c.connect();
  const closed = await c.events.next('connecting', (e) => e.code !== 0, 8000);
  ctx.note(`closed ${Date.now() - firstExp * 1000} ms after exp`);
  assert.equal(closed.code, 3005, `reason ${JSON.stringify(closed.reason)}`);
}, { timeout: 12000 });

t('subscription token: $ channel subscribes with a token from getToken', async (ctx) => {
  const ch = `$${uniq('priv')}`;
  const calls = [];
  const a = await ctx.subscribed('alice', ch, {
    getToken: async (c) => { calls.push(c.channel); return subToken('alice', c.channel, { ttl: 3600 }); },
  });
  assert.deepEqual(calls, [ch]);
  const sent = parsedFrames(a.c, '>').find((f) => f.subscribe && f.subscribe.channel === ch);
  assert.ok(sent.subscribe.token, 'SDK sent the token');
  await apiPublish(ch, { secret: 1 });
  assert.deepEqual((await a.events.next('publication')).data, { secret: 1 });
});

t('subscription token: $ channel in a namespace', async (ctx) => {
  const ch = `chat:$${uniq('priv')}`;
  const a = await ctx.subscribed('alice', ch, { token: subToken('alice', ch) });
  assert.equal(a.sub.state, 'subscribed');
});

t('subscription token: missing, for another user, for another channel, badly signed → 103', async (ctx) => {
  const c = ctx.client({ user: 'alice' });
  await c.connect();
  const cases = {
    missing: undefined,
    otherUser: (ch) => subToken('mallory', ch),
    otherChannel: () => subToken('alice', '$other-channel'),
    badSignature: (ch) => subToken('alice', ch, { secret: 'wrong' }),
  };
  for (const [name, mk] of Object.entries(cases)) {
    const ch = `$${uniq(name)}`;
    const s = c.sub(ch, mk ? { token: mk(ch) } : {});
    s.sub.subscribe();
    const u = await s.events.next('unsubscribed');
    assert.equal(u.code, 103, `${name}: unsubscribed code (reason ${JSON.stringify(u.reason)})`);
  }
  assert.equal(c.centrifuge.state, 'connected');
});

t('subscription token: expired → 109, SDK gets a fresh one via getToken', async (ctx) => {
  const ch = `$${uniq('exp')}`;
  let calls = 0;
  const c = ctx.client({ user: 'alice' });
  await c.connect();
  const s = c.sub(ch, {
    token: subToken('alice', ch, { exp: nowSec() - 60 }),
    getToken: async (x) => { calls++; return subToken('alice', x.channel, { ttl: 3600 }); },
    minResubscribeDelay: 50,
    maxResubscribeDelay: 200,
  });
  s.sub.subscribe();
  const err = await s.events.next('error');
  assert.equal(err.error.code, 109);
  await s.events.next('subscribed');
  assert.equal(calls, 1);
});

t('subscription token: refreshed with sub_refresh before it expires', async (ctx) => {
  const ch = `$${uniq('subref')}`;
  const firstExp = nowSec() + 2;
  let calls = 0;
  const a = await ctx.subscribed('alice', ch, {
    // As in the connection token refresh test: the token endpoint takes 300 ms.
    getToken: async (x) => {
      calls++;
      if (calls > 1) await sleep(300);
      return subToken('alice', x.channel, calls === 1 ? { exp: firstExp } : { ttl: 3600 });
    },
  });
  const reply = parsedFrames(a.c, '<').find((f) => f.subscribe && 'expires' in f.subscribe);
  assert.ok(reply, 'subscribe reply has expires');
  assert.equal(reply.subscribe.expires, true);
  assert.ok(reply.subscribe.ttl > 0 && reply.subscribe.ttl <= 2, `ttl ${reply.subscribe.ttl}`);
  await sleep(firstExp * 1000 - Date.now() + 2500);
  const closes = a.c.events.all('connecting').filter((e) => e.code !== 0);
  assert.deepEqual(closes, [], `connection closed ${closes.length ? `(at +${a.c.frames.find((f) => f.data.startsWith('[close'))?.t - firstExp * 1000} ms after exp) ` : ''}while the SDK was refreshing the subscription token`);
  assert.equal(calls, 2, 'getToken: subscribe + refresh');
  const cmd = parsedFrames(a.c, '>').find((f) => f.sub_refresh);
  assert.ok(cmd, 'SDK sent sub_refresh');
  assert.equal(cmd.sub_refresh.channel, ch);
  const rep = parsedFrames(a.c, '<').find((f) => f.id === cmd.id);
  assert.ok(rep && rep.sub_refresh, `sub_refresh reply: ${JSON.stringify(rep)}`);
  assert.equal(rep.sub_refresh.expires, true);
  assert.equal(a.events.count('unsubscribed'), 0);
  assert.equal(a.events.count('subscribing'), 1, 'never resubscribed');
  assert.equal(a.c.events.count('disconnected'), 0);
  await apiPublish(ch, { still: 'here' });
  assert.deepEqual((await a.events.next('publication')).data, { still: 'here' });
}, { timeout: 15000 });

// ---------------------------------------------------------------------------
// Channel permissions
// ---------------------------------------------------------------------------

t('permissions: user#42 as user 7 → 103; as user 42 → subscribed', async (ctx) => {
  const c7 = ctx.client({ user: '7' });
  await c7.connect();
  const s = c7.sub('user#42');
  s.sub.subscribe();
  const u = await s.events.next('unsubscribed');
  assert.equal(u.code, 103);
  assert.equal(c7.centrifuge.state, 'connected');

  const c42 = ctx.client({ user: '42' });
  await c42.connect();
  const s42 = c42.sub('user#42');
  s42.sub.subscribe();
  await s42.events.next('subscribed');

  const dm = c7.sub('chat:dm#7,42');
  dm.sub.subscribe();
  await dm.events.next('subscribed');
});

t('permissions: publish to user#42 as user 7 → 103', async (ctx) => {
  const c = ctx.client({ user: '7' });
  await c.connect();
  const err = await rejection(c.centrifuge.publish('user#42', { x: 1 }), 'publish to user#42');
  assert.equal(err.code, 103);
});

t('permissions: unknown namespace → 102', async (ctx) => {
  const c = ctx.client({ user: 'alice' });
  await c.connect();
  const s = c.sub(`nosuchns:${uniq('x')}`);
  s.sub.subscribe();
  const u = await s.events.next('unsubscribed');
  assert.equal(u.code, 102);
  assert.equal(c.centrifuge.state, 'connected');
});

// ---------------------------------------------------------------------------
// RPC
// ---------------------------------------------------------------------------

t('rpc: echo returns the data; unknown method → 104', async (ctx) => {
  const c = ctx.client({ user: 'alice' });
  await c.connect();
  const payload = { hello: 'world', list: [1, 2, 3], nested: { ok: true }, uni: 'ünï ✓' };
  const r = await c.centrifuge.rpc('echo', payload);
  assert.deepEqual(r.data, payload);
  const err = await rejection(c.centrifuge.rpc('no_such_method', { a: 1 }), 'unknown rpc method');
  assert.equal(err.code, 104);
  assert.equal(c.centrifuge.state, 'connected');
  const again = await c.centrifuge.rpc('echo', { n: 2 });
  assert.deepEqual(again.data, { n: 2 });
});

t('send: async message gets no reply and does not break the connection', async (ctx) => {
  const c = ctx.client({ user: 'alice' });
  await c.connect();
  await c.centrifuge.send({ fire: 'and forget' });
  await sleep(200);
  const r = await c.centrifuge.rpc('echo', { ok: 1 });
  assert.deepEqual(r.data, { ok: 1 });
  assert.equal(c.events.count('disconnected'), 0);
});

// ---------------------------------------------------------------------------
// Server-side subscriptions, unsubscribe and disconnect via API
// ---------------------------------------------------------------------------

t('server API unsubscribe → unsubscribed event (2000)', async (ctx) => {
  const ch = uniq('srvunsub');
  const a = await ctx.subscribed('alice', ch);
  const other = await ctx.subscribed('bob', ch);
  await server.apiOk('unsubscribe', { user: 'alice', channel: ch });
  const u = await a.events.next('unsubscribed');
  assert.equal(u.code, 2000);
  assert.equal(u.reason, 'server unsubscribe');
  assert.equal(a.sub.state, 'unsubscribed');
  assert.equal(a.c.centrifuge.state, 'connected');
  await apiPublish(ch, { after: 'unsub' });
  await other.events.next('publication');
  await sleep(150);
  assert.equal(a.events.count('publication'), 0);
  assert.equal(other.events.count('unsubscribed'), 0);
});

t('server API subscribe → server-side subscription on the client', async (ctx) => {
  const ch = uniq('srvsub');
  const c = ctx.client({ user: 'alice' });
  await c.connect();
  await server.apiOk('subscribe', { user: 'alice', channel: ch });
  const s = await c.events.next('subscribed', (e) => e.channel === ch);
  assert.equal(s.channel, ch);
  await apiPublish(ch, { server: 'side' });
  const p = await c.events.next('publication', (e) => e.channel === ch);
  assert.deepEqual(p.data, { server: 'side' });
  await server.apiOk('unsubscribe', { user: 'alice', channel: ch });
  await c.events.next('unsubscribed', (e) => e.channel === ch);
});

t('token channels claim → server-side subscriptions at connect', async (ctx) => {
  const ch = uniq('claim');
  const c = ctx.client({ user: 'alice', tokenOpts: { channels: [ch] } });
  await c.connect();
  const reply = parsedFrames(c, '<').find((f) => f.connect);
  assert.ok(reply.connect.subs && reply.connect.subs[ch], 'connect reply lists the subscription');
  await c.events.next('subscribed', (e) => e.channel === ch);
  await apiPublish(ch, { claim: 1 });
  const p = await c.events.next('publication', (e) => e.channel === ch);
  assert.deepEqual(p.data, { claim: 1 });
});

t('server API disconnect → disconnected 3503, no reconnect', async (ctx) => {
  const user = uniq('victim');
  const c = ctx.client({ user });
  await c.connect();
  await server.apiOk('disconnect', { user });
  const d = await c.events.next('disconnected');
  assert.equal(d.code, 3503, `reason ${JSON.stringify(d.reason)}`);
  await sleep(400);
  assert.equal(c.centrifuge.state, 'disconnected');
  assert.equal(c.events.count('connected'), 1);
});

t('server API disconnect with client id and custom code', async (ctx) => {
  const user = uniq('u');
  const a = ctx.client({ user });
  const b = ctx.client({ user });
  await a.connect();
  await b.connect();
  await server.apiOk('disconnect', { user, client: a.id, disconnect: { code: 4501, reason: 'go away' } });
  const d = await a.events.next('disconnected');
  assert.deepEqual({ code: d.code, reason: d.reason }, { code: 4501, reason: 'go away' });
  await sleep(200);
  assert.equal(b.centrifuge.state, 'connected', 'the other connection of the user stays');
  // A reconnect code (< 3500): the SDK reconnects by itself.
  await server.apiOk('disconnect', { user, client: b.id, disconnect: { code: 3009, reason: 'come back' } });
  const cn = await b.events.next('connecting', (e) => e.code !== 0);
  assert.deepEqual({ code: cn.code, reason: cn.reason }, { code: 3009, reason: 'come back' });
  const again = await b.events.next('connected');
  assert.notEqual(again.client, b.id, 'a new connection after reconnect');
});

// ---------------------------------------------------------------------------
// WebSocket transport level (raw ws, no SDK)
// ---------------------------------------------------------------------------

t('websocket: the server answers a client Close frame (closing handshake)', async (ctx) => {
  const ws = new WebSocket(server.wsUrl);
  ctx.onClose(() => ws.terminate());
  await withTimeout(new Promise((r, j) => { ws.on('open', r); ws.on('error', j); }), 2000, 'ws open');
  ws.send(JSON.stringify({ id: 1, connect: { token: connToken('alice') } }));
  await withTimeout(new Promise((r) => ws.once('message', r)), 2000, 'connect reply');
  ws.close(1000, 'bye');
  const [code] = await withTimeout(new Promise((r) => ws.on('close', (c, reason) => r([c, String(reason)]))), 2000, 'close');
  // 1006 means the TCP connection ended without the server's Close frame (RFC 6455 5.5.1).
  assert.notEqual(code, 1006, 'server dropped the TCP connection without echoing the Close frame');
}, { skip: TRANSPORT !== 'websocket' && 'raw ws closing handshake: WebSocket transport only (TRANSPORT=websocket)' });

// ---------------------------------------------------------------------------
// Emulation transports (http_stream / sse through the SDK)
// ---------------------------------------------------------------------------

t('fallback: websocket refused (404) → SDK falls back to http_stream and connects', async (ctx) => {
  const c = ctx.client({ user: 'alice' });
  const transportError = c.events.next('error', (e) => e.type === 'transport');
  const connected = await c.connect(8000);
  assert.equal(connected.transport, 'http_stream');
  const err = await transportError;
  assert.equal(err.transport, 'websocket', 'the failed transport was the websocket');
  assert.equal(c.sockets.length, 1, 'one websocket attempt');
  assert.ok(c.sockets[0].url.endsWith(REFUSING_WS_PATH), c.sockets[0].url);
  // And it works over the fallback transport.
  const r = await c.centrifuge.rpc('echo', { via: 'fallback' });
  assert.deepEqual(r.data, { via: 'fallback' });
}, { skip: TRANSPORT !== 'fallback' && 'TRANSPORT=fallback only' });

t('emulation: the connect reply names the session and node used by /emulation', async (ctx) => {
  const c = ctx.client({ user: 'alice' });
  await c.connect();
  const reply = parsedFrames(c, '<').find((f) => f.connect);
  assert.ok(reply, 'connect reply received over the stream');
  assert.match(reply.connect.session, UUID_RE);
  assert.ok(reply.connect.node, 'node in the connect reply');
  // Commands after connect go through POST /emulation and their replies come back on the stream.
  const ch = uniq('emu');
  const s = c.sub(ch);
  s.sub.subscribe();
  await s.events.next('subscribed');
  const sub = parsedFrames(c, '>').find((f) => f.subscribe && f.subscribe.channel === ch);
  assert.ok(sub, 'subscribe command sent through /emulation');
  const failed = c.frames.filter((f) => f.meta && f.data.startsWith('[POST /emulation'));
  assert.deepEqual(failed.map((f) => f.data), [], 'no failed emulation request');
}, { skip: !EMULATION && 'emulation transports only (TRANSPORT=http_stream|sse|fallback)' });

t('emulation: server shutdown ends the stream with a disconnect push 3001 (reconnect)', async (ctx) => {
  const srv = await ctx.startServer({});
  const c = ctx.client({ user: 'alice', server: srv, minReconnectDelay: 5000, maxReconnectDelay: 5000 });
  await c.connect();
  const connecting = c.events.next('connecting', (e) => e.code !== 0, 6000);
  await srv.stop();
  const cn = await connecting;
  assert.equal(cn.code, 3001, `reason ${JSON.stringify(cn.reason)}`);
  const push = parsedFrames(c, '<').find((f) => f.push && f.push.disconnect);
  assert.ok(push, 'a disconnect push arrived on the stream');
  assert.deepEqual(push.push.disconnect, { code: 3001, reason: 'shutdown', reconnect: true });
  c.centrifuge.disconnect();
}, { skip: !EMULATION && 'emulation transports only (TRANSPORT=http_stream|sse|fallback)', timeout: 15000 });
