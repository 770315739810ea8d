// Unidirectional transports (uni_sse, uni_http_stream, uni_websocket) and the HTTP
// edges of the emulation transports, driven without the SDK: a plain EventSource (npm
// `eventsource`), fetch streaming and `ws`. The contract is docs/PROTOCOL.md, section
// "Other transports". Independent of env TRANSPORT (run once by run-all.mjs).
//
// Run: cd tests/js && npm run test:uni

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import {
  compatTest, startServer, connToken, nowSec, sleep, withTimeout, eventually,
  WebSocket, EventSource, DEFAULT_WAIT_MS,
} from './harness.mjs';

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) await server.stop();
});

const getServer = () => server;
const t = (name, fn, opts = {}) => compatTest(name, fn, { getServer, timeout: 20000, ...opts });

let counter = 0;
const uniq = (prefix) => `${prefix}-${process.pid}-${++counter}`;

async function apiPublish(channel, data, srv = server) {
  return srv.apiOk('publish', { channel, data });
}

/** Resolves when `fn()` holds, polling; the error names `what`. */
const until = (fn, what, timeout = DEFAULT_WAIT_MS) => eventually(fn, what, timeout, 20);

/** Every publication of `ch` in a list of uni pushes (connect-time recovered ones too). */
function pubsOf(msgs, ch) {
  const out = [];
  for (const m of msgs) {
    const sub = m.connect && m.connect.subs && m.connect.subs[ch];
    if (sub && Array.isArray(sub.publications)) out.push(...sub.publications);
    if (m.channel === ch && m.pub) out.push(m.pub);
  }
  return out;
}

/** Asserts `offsets` is exactly first, first+1, ..., last (no gap, no duplicate). */
function assertConsecutive(offsets, first, last, what) {
  const want = [];
  for (let o = first; o <= last; o++) want.push(o);
  assert.deepEqual(offsets, want, `${what}: offsets must be ${first}..${last} once each, in order`);
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/**
 * A plain EventSource on /connection/uni_sse. `lastEventId` is sent as the
 * `Last-Event-ID` header of the first request (the package sends its own on its
 * automatic reconnects). Records every message (parsed) with its event id.
 */
function openUniSse(ctx, connectReq, { lastEventId, srv = server, label = 'uni_sse' } = {}) {
  const url = `${srv.url}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify(connectReq))}`;
  const log = { msgs: [], ids: [], opens: 0, errors: [], requests: [], closedByTest: false, label };
  let first = true;
  const es = new EventSource(url, {
    fetch: (u, init) => {
      const headers = { ...(init.headers || {}) };
      if (first && lastEventId !== undefined) headers['Last-Event-ID'] = lastEventId;
      first = false;
      log.requests.push({ t: Date.now(), lastEventId: headers['Last-Event-ID'] ?? null });
      return fetch(u, { ...init, headers });
    },
  });
  es.onopen = () => { log.opens++; };
  es.onerror = (e) => { log.errors.push({ t: Date.now(), code: e.code, message: e.message }); };
  es.onmessage = (ev) => {
    if (log.closedByTest) return;
    let data;
    try { data = JSON.parse(ev.data); } catch { data = { unparsable: ev.data }; }
    log.msgs.push(data);
    log.ids.push(ev.lastEventId);
  };
  log.es = es;
  log.close = () => { log.closedByTest = true; es.close(); };
  ctx.onClose(() => es.close());
  ctx.note(`${label} url ${url.slice(0, 120)}…`);
  const origDiag = ctx.diagnostics.bind(ctx);
  ctx.diagnostics = () => `${origDiag()}\n--- ${label}: opens ${log.opens}, requests ${JSON.stringify(log.requests)}, errors ${JSON.stringify(log.errors)}\n${log.msgs.map((m, i) => `  [id ${log.ids[i]}] ${JSON.stringify(m)}`).join('\n')}`;
  return log;
}

/**
 * Reads a streaming fetch response in the background: newline-delimited JSON
 * (`mode: 'lines'`) or SSE (`mode: 'sse'`, events with data/id, `:` comments counted).
 */
function streamReader(res, mode) {
  const r = { items: [], comments: 0, ended: false, error: null, raw: '' };
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let ev = { data: [], id: undefined };
  const onLine = (line) => {
    if (mode === 'lines') {
      if (!line.trim()) return;
      try { r.items.push(JSON.parse(line)); } catch { r.items.push({ unparsable: line }); }
      return;
    }
    if (line === '') {
      if (ev.data.length) {
        const text = ev.data.join('\n');
        let data;
        try { data = JSON.parse(text); } catch { data = { unparsable: text }; }
        r.items.push({ data, id: ev.id });
      }
      ev = { data: [], id: undefined };
      return;
    }
    if (line.startsWith(':')) { r.comments++; return; }
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') ev.data.push(value);
    else if (field === 'id') ev.id = value;
  };
  r.done = (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const chunk = decoder.decode(value, { stream: true });
        r.raw += chunk;
        if (r.raw.length > 100000) r.raw = r.raw.slice(-100000);
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          onLine(line);
        }
      }
    } catch (e) {
      r.error = e;
    } finally {
      r.ended = true;
    }
  })();
  return r;
}

/** POST/GET a streaming endpoint; resolves with {res, reader, abort}. */
async function openStream(ctx, url, init, mode) {
  const ac = new AbortController();
  ctx.onClose(() => ac.abort());
  const res = await withTimeout(fetch(url, { ...init, signal: ac.signal }), DEFAULT_WAIT_MS, `response headers of ${url}`);
  if (!res.ok) {
    const text = await res.text().catch(() => '');
    throw new Error(`${init.method || 'GET'} ${url} answered ${res.status}: ${text.slice(0, 300)}`);
  }
  const reader = streamReader(res, mode);
  ctx.onClose(() => reader.done);
  const origDiag = ctx.diagnostics.bind(ctx);
  ctx.diagnostics = () => `${origDiag()}\n--- stream ${url.slice(0, 80)} (ended ${reader.ended}, error ${reader.error && reader.error.message}):\n${reader.raw.slice(-4000)}`;
  return { res, reader, abort: () => ac.abort() };
}

/** Plain request helper: {status, headers, text, json}. */
async function request(url, init = {}) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(DEFAULT_WAIT_MS) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

// ---------------------------------------------------------------------------
// uni_sse
// ---------------------------------------------------------------------------

t('uni_sse: connect push with the token channels, then server API publications with ids', async (ctx) => {
  const ch = uniq('news');
  const es = openUniSse(ctx, { token: connToken('alice', { channels: [ch] }) });
  await until(() => es.msgs.length >= 1, 'the connect push');
  const connect = es.msgs[0].connect;
  assert.ok(connect, `first push is {"connect":..}: ${JSON.stringify(es.msgs[0])}`);
  assert.equal(typeof connect.client, 'string');
  assert.equal(typeof connect.version, 'string');
  assert.equal(connect.ping, 25);
  assert.ok(connect.subs && connect.subs[ch], `connect.subs has ${ch}: ${JSON.stringify(connect.subs)}`);
  assert.equal(es.opens, 1);

  // Subscribed on the server: a publication now reaches it.
  await until(async () => (await server.apiOk('presence_stats', { channel: ch })).num_clients === 1,
    'the uni_sse client to be subscribed');
  const sent = [];
  for (let n = 1; n <= 3; n++) sent.push(await apiPublish(ch, { n }));
  await until(() => pubsOf(es.msgs, ch).length >= 3, '3 publications');
  const pubs = pubsOf(es.msgs, ch);
  assert.deepEqual(pubs.map((p) => p.data), [{ n: 1 }, { n: 2 }, { n: 3 }]);
  assert.deepEqual(pubs.map((p) => p.offset), sent.map((r) => r.offset));
  const pubMsgs = es.msgs.filter((m) => m.channel === ch && m.pub);
  assert.equal(pubMsgs.length, 3, 'publications as {"channel","pub"} (no push wrapper)');
  assert.ok(!es.msgs.some((m) => m.push), 'no {"push":..} wrapper on a uni transport');

  // The event id of the last publication: {"<ch>":[offset,"epoch"]}.
  const lastId = es.ids[es.msgs.lastIndexOf(pubMsgs[2])];
  let parsed;
  assert.doesNotThrow(() => { parsed = JSON.parse(lastId); }, `event id is JSON: ${JSON.stringify(lastId)}`);
  assert.deepEqual(parsed[ch], [sent[2].offset, sent[2].epoch]);
});

t('uni_sse: destroyed EventSource, new one with Last-Event-ID while publishing → no gap, no duplicate', async (ctx) => {
  const ch = uniq('resume');
  const token = connToken('alice', { channels: [ch] });
  const es1 = openUniSse(ctx, { token }, { label: 'es1' });
  await until(() => es1.msgs.some((m) => m.connect), 'es1 connect push');
  await until(async () => (await server.apiOk('presence_stats', { channel: ch })).num_clients === 1,
    'es1 subscribed');

  // A publisher running all along: 60 publications, one every ~10 ms.
  const N = 60;
  const results = [];
  const publisher = (async () => {
    for (let n = 1; n <= N; n++) {
      results.push(await apiPublish(ch, { n }));
      await sleep(10);
    }
  })();

  await until(() => pubsOf(es1.msgs, ch).length >= 15, 'es1 to get 15 publications', 8000);
  es1.close();
  const got1 = pubsOf(es1.msgs, ch);
  const lastEventId = es1.ids[es1.ids.length - 1];
  ctx.note(`es1 closed after offset ${got1[got1.length - 1].offset}, Last-Event-ID ${lastEventId}`);
  assert.ok(lastEventId, 'es1 got event ids');

  const es2 = openUniSse(ctx, { token }, { lastEventId, label: 'es2' });
  await withTimeout(publisher, 15000, 'publisher');
  const lastOffset = results[results.length - 1].offset;
  await until(() => {
    const p = pubsOf(es2.msgs, ch);
    return p.length && p[p.length - 1].offset >= lastOffset;
  }, `es2 to reach offset ${lastOffset}`, 8000);
  await sleep(200);

  const got2 = pubsOf(es2.msgs, ch);
  const firstOffset = results[0].offset;
  assertConsecutive([...got1, ...got2].map((p) => p.offset), firstOffset, lastOffset, 'es1 then es2');
  assert.deepEqual([...got1, ...got2].map((p) => p.data.n), Array.from({ length: N }, (_, i) => i + 1));
  const connect2 = es2.msgs.find((m) => m.connect);
  assert.ok(connect2, 'es2 got a connect push');
  const sub2 = connect2.connect.subs && connect2.connect.subs[ch];
  assert.ok(sub2, `es2 connect.subs has ${ch}`);
  assert.equal(sub2.recovered, true, `es2 recovered: ${JSON.stringify(sub2)}`);
});

t('uni_sse: server API disconnect with a reconnect code → EventSource reconnects with Last-Event-ID and recovers', async (ctx) => {
  const ch = uniq('autoresume');
  const user = uniq('u');
  const token = connToken(user, { channels: [ch] });
  const es = openUniSse(ctx, { token });
  await until(() => es.msgs.some((m) => m.connect), 'connect push');
  await until(async () => (await server.apiOk('presence_stats', { channel: ch })).num_clients === 1, 'subscribed');
  const sent = [];
  for (let n = 1; n <= 3; n++) sent.push(await apiPublish(ch, { n }));
  await until(() => pubsOf(es.msgs, ch).length >= 3, '3 publications');

  await server.apiOk('disconnect', { user, disconnect: { code: 3009, reason: 'come back' } });
  await until(() => es.msgs.some((m) => m.disconnect), 'the disconnect push');
  const disc = es.msgs.find((m) => m.disconnect).disconnect;
  assert.equal(disc.code, 3009);
  assert.equal(disc.reason, 'come back');
  assert.equal(disc.reconnect, true, 'code 3009 < 3500: reconnect');
  await until(async () => (await server.apiOk('presence_stats', { channel: ch })).num_clients === 0,
    'the server to drop the connection');

  // While it is away (the package waits ~3 s before reconnecting).
  for (let n = 4; n <= 6; n++) sent.push(await apiPublish(ch, { n }));
  await until(() => es.msgs.filter((m) => m.connect).length >= 2, 'the reconnect (second connect push)', 10000);
  assert.ok(es.requests.length >= 2 && es.requests[1].lastEventId, `reconnect sent Last-Event-ID: ${JSON.stringify(es.requests)}`);
  await until(async () => (await server.apiOk('presence_stats', { channel: ch })).num_clients === 1, 'resubscribed');
  sent.push(await apiPublish(ch, { n: 7 }));
  await until(() => pubsOf(es.msgs, ch).some((p) => p.offset === sent[6].offset), 'the live publication 7', 5000);
  await sleep(200);
  const pubs = pubsOf(es.msgs, ch);
  assertConsecutive(pubs.map((p) => p.offset), sent[0].offset, sent[6].offset, 'across the reconnect');
  assert.deepEqual(pubs.map((p) => p.data.n), [1, 2, 3, 4, 5, 6, 7]);
}, { timeout: 25000 });

t('uni_sse: explicit offset in cf_connect subs resumes from it (and wins over Last-Event-ID)', async (ctx) => {
  const ch = uniq('explicit');
  const sent = [];
  for (let n = 1; n <= 5; n++) sent.push(await apiPublish(ch, { n }));
  const { epoch } = sent[0];
  const token = connToken('alice', { channels: [ch] });

  // Explicit position only.
  const a = openUniSse(ctx, { token, subs: { [ch]: { recover: true, offset: sent[1].offset, epoch } } }, { label: 'explicit' });
  await until(() => pubsOf(a.msgs, ch).length >= 3, 'a: recovered publications 3..5');
  await sleep(150);
  assert.deepEqual(pubsOf(a.msgs, ch).map((p) => p.data.n), [3, 4, 5]);
  const subA = a.msgs.find((m) => m.connect).connect.subs[ch];
  assert.equal(subA.recovered, true, JSON.stringify(subA));

  // Explicit position and an (other) Last-Event-ID: the explicit one wins.
  const lastEventId = JSON.stringify({ [ch]: [sent[3].offset, epoch] });
  const b = openUniSse(ctx, { token, subs: { [ch]: { recover: true, offset: sent[0].offset, epoch } } },
    { lastEventId, label: 'explicit+last-event-id' });
  await until(() => pubsOf(b.msgs, ch).length >= 4, 'b: recovered publications 2..5');
  await sleep(150);
  assert.deepEqual(pubsOf(b.msgs, ch).map((p) => p.data.n), [2, 3, 4, 5]);

  // Last-Event-ID only.
  const c = openUniSse(ctx, { token }, { lastEventId, label: 'last-event-id' });
  await until(() => pubsOf(c.msgs, ch).length >= 1, 'c: recovered publication 5');
  await sleep(150);
  assert.deepEqual(pubsOf(c.msgs, ch).map((p) => p.data.n), [5]);

  // And all of them get what comes next, once.
  const r6 = await apiPublish(ch, { n: 6 });
  for (const x of [a, b, c]) {
    await until(() => pubsOf(x.msgs, ch).some((p) => p.offset === r6.offset), `${x.label}: live publication 6`);
  }
  await sleep(150);
  assert.deepEqual(pubsOf(a.msgs, ch).map((p) => p.data.n), [3, 4, 5, 6]);
  assert.deepEqual(pubsOf(b.msgs, ch).map((p) => p.data.n), [2, 3, 4, 5, 6]);
  assert.deepEqual(pubsOf(c.msgs, ch).map((p) => p.data.n), [5, 6]);
});

t('uni_sse (raw): text/event-stream, id lines on publications, bad token → 3500 and the end of the stream', async (ctx) => {
  const ch = uniq('raw');
  const cf = encodeURIComponent(JSON.stringify({ token: connToken('alice', { channels: [ch] }) }));
  const { res, reader } = await openStream(ctx, `${server.url}/connection/uni_sse?cf_connect=${cf}`, {}, 'sse');
  assert.match(res.headers.get('content-type') || '', /^text\/event-stream/);
  await until(() => reader.items.length >= 1, 'connect event');
  assert.ok(reader.items[0].data.connect, JSON.stringify(reader.items[0]));
  await until(async () => (await server.apiOk('presence_stats', { channel: ch })).num_clients === 1, 'subscribed');
  const r = await apiPublish(ch, { raw: 1 });
  await until(() => reader.items.some((i) => i.data.pub), 'publication event');
  const ev = reader.items.find((i) => i.data.pub);
  assert.equal(ev.data.channel, ch);
  assert.ok(ev.id, 'the publication event has an id: line');
  assert.deepEqual(JSON.parse(ev.id)[ch], [r.offset, r.epoch]);

  const bad = encodeURIComponent(JSON.stringify({ token: connToken('alice', { secret: 'wrong-secret' }) }));
  const b = await openStream(ctx, `${server.url}/connection/uni_sse?cf_connect=${bad}`, {}, 'sse');
  await withTimeout(b.reader.done, DEFAULT_WAIT_MS, 'the stream to end after an invalid token');
  const last = b.reader.items[b.reader.items.length - 1];
  assert.ok(last && last.data.disconnect, `last event is a disconnect: ${JSON.stringify(b.reader.items)}`);
  assert.equal(last.data.disconnect.code, 3500);
  assert.equal(last.data.disconnect.reason, 'invalid token');

  const expired = encodeURIComponent(JSON.stringify({ token: connToken('alice', { exp: nowSec() - 60 }) }));
  const e = await openStream(ctx, `${server.url}/connection/uni_sse?cf_connect=${expired}`, {}, 'sse');
  await withTimeout(e.reader.done, DEFAULT_WAIT_MS, 'the stream to end after an expired token');
  const lastE = e.reader.items[e.reader.items.length - 1];
  assert.ok(lastE && lastE.data.disconnect, `last event is a disconnect: ${JSON.stringify(e.reader.items)}`);
  assert.equal(lastE.data.disconnect.code, 3005);
});

t('uni_sse: keep-alive ": ping" comments every ping_interval', async (ctx) => {
  const srv = await ctx.startServer({ client: { ping_interval: '1s', pong_timeout: '500ms' } });
  const cf = encodeURIComponent(JSON.stringify({ token: connToken('alice') }));
  const { reader } = await openStream(ctx, `${srv.url}/connection/uni_sse?cf_connect=${cf}`, {}, 'sse');
  await sleep(2600);
  assert.ok(reader.comments >= 2, `got ${reader.comments} comment lines in 2.6 s`);
  assert.equal(reader.ended, false, 'a uni connection needs no pong: still open');
}, { timeout: 15000 });

// ---------------------------------------------------------------------------
// uni_http_stream, uni_websocket
// ---------------------------------------------------------------------------

t('uni_http_stream: newline-delimited connect push and publication', async (ctx) => {
  const ch = uniq('uhs');
  const { reader } = await openStream(ctx, `${server.url}/connection/uni_http_stream`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token: connToken('alice', { channels: [ch] }) }),
  }, 'lines');
  await until(() => reader.items.length >= 1, 'connect push');
  const connect = reader.items[0].connect;
  assert.ok(connect, JSON.stringify(reader.items[0]));
  assert.ok(connect.subs && connect.subs[ch]);
  await until(async () => (await server.apiOk('presence_stats', { channel: ch })).num_clients === 1, 'subscribed');
  const r = await apiPublish(ch, { via: 'uni_http_stream' });
  await until(() => reader.items.some((i) => i.pub), 'publication');
  const p = reader.items.find((i) => i.pub);
  assert.equal(p.channel, ch);
  assert.deepEqual(p.pub.data, { via: 'uni_http_stream' });
  assert.equal(p.pub.offset, r.offset);
});

t('uni_websocket: first message is the connect request; connect push and publication', async (ctx) => {
  const ch = uniq('uws');
  const addr = server.url.replace(/^http/, 'ws');
  const ws = new WebSocket(`${addr}/connection/uni_websocket`);
  ctx.onClose(() => ws.terminate());
  const msgs = [];
  ws.on('message', (d) => {
    for (const line of String(d).split('\n')) {
      if (line.trim()) msgs.push(JSON.parse(line));
    }
  });
  await withTimeout(new Promise((r, j) => { ws.on('open', r); ws.on('error', j); }), DEFAULT_WAIT_MS, 'ws open');
  ws.send(JSON.stringify({ token: connToken('alice', { channels: [ch] }) }));
  await until(() => msgs.length >= 1, 'connect push');
  assert.ok(msgs[0].connect && msgs[0].connect.subs && msgs[0].connect.subs[ch], JSON.stringify(msgs[0]));
  await until(async () => (await server.apiOk('presence_stats', { channel: ch })).num_clients === 1, 'subscribed');
  const r = await apiPublish(ch, { via: 'uni_websocket' });
  await until(() => msgs.some((m) => m.pub), 'publication');
  const p = msgs.find((m) => m.pub);
  assert.equal(p.channel, ch);
  assert.deepEqual(p.pub.data, { via: 'uni_websocket' });
  assert.equal(p.pub.offset, r.offset);
});

// ---------------------------------------------------------------------------
// Emulation endpoints without the SDK, and bad input
// ---------------------------------------------------------------------------

t('http_stream (raw): headers, POST /emulation → 204 and the reply on the stream; other node → 404', async (ctx) => {
  const { res, reader } = await openStream(ctx, `${server.url}/connection/http_stream`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: 1, connect: { token: connToken('alice') } }),
  }, 'lines');
  assert.match(res.headers.get('content-type') || '', /^application\/json/);
  const cc = (res.headers.get('cache-control') || '').toLowerCase();
  assert.ok(cc.includes('no-cache') && cc.includes('no-store'), `Cache-Control: ${cc}`);
  assert.equal(res.headers.get('x-accel-buffering'), 'no');
  await until(() => reader.items.some((i) => i.id === 1), 'connect reply');
  const { session, node } = reader.items.find((i) => i.id === 1).connect;
  assert.ok(session && node, 'session and node in the connect reply');

  const post = (body) => request(`${server.url}/emulation`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  const cmds = [{ id: 2, rpc: { method: 'echo', data: { a: 1 } } }, { id: 3, rpc: { method: 'echo', data: { b: 2 } } }];
  const ok = await post({ session, node, data: cmds.map((c) => JSON.stringify(c)).join('\n') });
  assert.equal(ok.status, 204, ok.text);
  await until(() => reader.items.some((i) => i.id === 3), 'rpc replies on the stream');
  assert.deepEqual(reader.items.find((i) => i.id === 2).rpc, { data: { a: 1 } });
  assert.deepEqual(reader.items.find((i) => i.id === 3).rpc, { data: { b: 2 } });

  const other = await post({ session, node: `${node}-other`, data: JSON.stringify({ id: 4, rpc: { method: 'echo', data: {} } }) });
  assert.equal(other.status, 404, other.text);
  assert.equal(other.json && other.json.error && other.json.error.code, 108, other.text);
});

t('sse (raw): GET with cf_connect → text/event-stream with the connect reply', async (ctx) => {
  const cf = encodeURIComponent(JSON.stringify({ id: 1, connect: { token: connToken('alice') } }));
  const { res, reader } = await openStream(ctx, `${server.url}/connection/sse?cf_connect=${cf}`, {}, 'sse');
  assert.match(res.headers.get('content-type') || '', /^text\/event-stream/);
  const cc = (res.headers.get('cache-control') || '').toLowerCase();
  assert.ok(cc.includes('no-cache') && cc.includes('no-store'), `Cache-Control: ${cc}`);
  assert.equal(res.headers.get('x-accel-buffering'), 'no');
  await until(() => reader.items.some((i) => i.data.id === 1), 'connect reply event');
  const reply = reader.items.find((i) => i.data.id === 1).data;
  assert.ok(reply.connect && reply.connect.session, JSON.stringify(reply));
});

t('bad input: malformed cf_connect on uni_sse → 400 with a JSON error', async () => {
  for (const cf of ['not-json', '{"token":', '[1,2]', '', '{"token":5}']) {
    const r = await request(`${server.url}/connection/uni_sse?cf_connect=${encodeURIComponent(cf)}`);
    assert.equal(r.status, 400, `GET /connection/uni_sse?cf_connect=${cf}: ${r.status} ${r.text}`);
    assert.ok(r.json && r.json.error && typeof r.json.error.code === 'number',
      `GET /connection/uni_sse?cf_connect=${cf}: JSON error body, got ${r.text}`);
  }
  // No cf_connect at all is an empty connect request (no token, anonymous not allowed):
  // either a 400, or a stream that ends at once with a disconnect (no reconnect).
  const noParam = await request(`${server.url}/connection/uni_sse`);
  const what = `GET /connection/uni_sse without cf_connect: ${noParam.status} ${noParam.text}`;
  if (noParam.status !== 400) {
    assert.equal(noParam.status, 200, what);
    const events = noParam.text.split('\n').filter((l) => l.startsWith('data:')).map((l) => JSON.parse(l.slice(5)));
    assert.equal(events.length, 1, what);
    assert.ok(events[0].disconnect && events[0].disconnect.reconnect === false, what);
  }
  const badPost = await request(`${server.url}/connection/uni_http_stream`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: 'not json',
  });
  assert.equal(badPost.status, 400, `POST /connection/uni_http_stream with a malformed body: ${badPost.status} ${badPost.text}`);
  assert.ok(badPost.json && badPost.json.error, badPost.text);
});

t('bad input: malformed cf_connect on the bidirectional sse → 400 JSON error or a 3501 disconnect push', async () => {
  // The contract does not single this case out: either an HTTP 400 with a JSON error, or
  // (as WebSocket closes with 3501 "bad request" on malformed JSON) a stream whose only
  // event is the disconnect push {"push":{"disconnect":{"code":3501,..}}}.
  for (const cf of ['not-json', '{"id":1,"connect":', '[1,2]']) {
    const r = await request(`${server.url}/connection/sse?cf_connect=${encodeURIComponent(cf)}`);
    const what = `GET /connection/sse?cf_connect=${cf}: ${r.status} ${r.text}`;
    if (r.status === 400) {
      assert.ok(r.json && r.json.error, what);
    } else {
      assert.equal(r.status, 200, what);
      const events = r.text.split('\n').filter((l) => l.startsWith('data:')).map((l) => JSON.parse(l.slice(5)));
      assert.equal(events.length, 1, what);
      assert.equal(events[0].push && events[0].push.disconnect && events[0].push.disconnect.code, 3501, what);
    }
  }
});

t('bad input: POST /emulation with an unknown session → 404 {"error":{"code":108}}', async () => {
  const r = await request(`${server.url}/emulation`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ session: '00000000-0000-4000-8000-000000000000', node: 'nope', data: '{"id":1,"rpc":{"method":"echo"}}' }),
  });
  assert.equal(r.status, 404, r.text);
  assert.deepEqual(r.json, { error: { code: 108, message: 'unknown session' } });
});

t('bad input: malformed /emulation body → 400 {"error":{"code":107}}; too big → 413', async () => {
  const bodies = ['not json', '{"session":', '[]', '{"session":1,"node":2,"data":3}'];
  for (const body of bodies) {
    const r = await request(`${server.url}/emulation`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body,
    });
    assert.equal(r.status, 400, `body ${body}: ${r.status} ${r.text}`);
    assert.equal(r.json && r.json.error && r.json.error.code, 107, `body ${body}: ${r.text}`);
    assert.match(r.json.error.message, /^bad request/, r.text);
  }
  const big = JSON.stringify({ session: 'x', node: 'y', data: 'z'.repeat(70000) });
  const r = await request(`${server.url}/emulation`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: big,
  });
  assert.equal(r.status, 413, `${big.length}-byte body: ${r.status} ${r.text.slice(0, 200)}`);
  assert.equal(r.json && r.json.error && r.json.error.code, 107, r.text.slice(0, 200));
});

t('bad input: an Origin that is not allowed → 403 {"error":{"code":103}}', async () => {
  const cf = encodeURIComponent(JSON.stringify({ token: connToken('alice') }));
  const r = await request(`${server.url}/connection/uni_sse?cf_connect=${cf}`, {
    headers: { Origin: 'http://evil.example' },
  });
  assert.equal(r.status, 403, `${r.status} ${r.text.slice(0, 200)}`);
  assert.equal(r.json && r.json.error && r.json.error.code, 103, r.text.slice(0, 200));
});
