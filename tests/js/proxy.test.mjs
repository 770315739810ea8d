// Proxies with the real centrifuge-js SDK: a connect proxy and an rpc proxy answered by a
// Node backend started here (node:http), over WebSocket and HTTP streaming. The contract
// is docs/PROTOCOL.md, section "Proxies".
//
// Run: cd tests/js && node --test proxy.test.mjs

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before } from 'node:test';
import { compatTest, startServer, connToken, rejection } from './harness.mjs';

let backend;
let server;
/** Every call the backend received: { path, body, headers }. */
const calls = [];

function answer(path, req) {
  if (path === '/connect') {
    const data = req.data || {};
    if (data.mode === 'kick') return { disconnect: { code: 4501, reason: 'banned' } };
    if (data.mode === 'error') return { error: { code: 4001, message: 'who are you' } };
    return {
      result: {
        user: data.user || 'anon',
        info: { via: 'proxy' },
        data: { welcome: data.user, transport: req.transport },
        meta: { plan: 'gold' },
      },
    };
  }
  if (path === '/rpc') {
    if (req.method === 'broken') return 'not json';
    if (req.method === 'deny') return { error: { code: 4003, message: 'denied' } };
    return { result: { data: { method: req.method, user: req.user, meta: req.meta, echo: req.data } } };
  }
  return { error: { code: 404, message: 'no such path' } };
}

before(async () => {
  backend = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      const parsed = JSON.parse(body || '{}');
      calls.push({ path: req.url, body: parsed, headers: req.headers });
      const a = answer(req.url, parsed);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(typeof a === 'string' ? a : JSON.stringify(a));
    });
  });
  await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${backend.address().port}`;
  server = await startServer({
    connect_proxy_name: 'connect',
    rpc_proxy_name: 'rpc',
    proxies: [
      { name: 'connect', endpoint: `${base}/connect`, timeout: '2s', http_headers: ['User-Agent'] },
      { name: 'rpc', endpoint: `${base}/rpc`, timeout: '2s', include_connection_meta: true },
    ],
  });
});

after(async () => {
  if (server) await server.stop();
  if (backend) backend.close();
});

const getServer = () => server;
const t = (name, fn, opts = {}) => compatTest(name, fn, { getServer, ...opts });

for (const transport of ['websocket', 'http_stream']) {
  t(`${transport}: the connect proxy says who connects, the rpc proxy answers`, async (ctx) => {
    const c = ctx.client({ transport, data: { user: 'alice' } });
    const connected = await c.connect();
    assert.deepEqual(connected.data, { welcome: 'alice', transport });
    const call = calls.filter((x) => x.path === '/connect').at(-1);
    assert.equal(call.body.transport, transport);
    assert.equal(call.body.protocol, 'json');
    assert.ok(call.body.client, 'the client id is sent');
    // `http_headers = ["User-Agent"]`: Node's fetch (http_stream) sends "node"; `ws` sends none.
    assert.equal(call.headers['user-agent'], transport === 'http_stream' ? 'node' : undefined);

    const r = await c.centrifuge.rpc('whoami', { n: 1 });
    assert.deepEqual(r.data, { method: 'whoami', user: 'alice', meta: { plan: 'gold' }, echo: { n: 1 } });
    // The server's own methods stay its own.
    assert.deepEqual((await c.centrifuge.rpc('echo', { n: 2 })).data, { n: 2 });

    const refused = await rejection(c.centrifuge.rpc('deny', {}), 'the backend refuses');
    assert.equal(refused.code, 4003);
    assert.equal(refused.message, 'denied');
    const broken = await rejection(c.centrifuge.rpc('broken', {}), 'the backend answers garbage');
    assert.equal(broken.code, 100);
    assert.equal(c.centrifuge.state, 'connected');
  });
}

t('a disconnect from the connect proxy ends the connection for good', async (ctx) => {
  const c = ctx.client({ data: { mode: 'kick' } });
  const d = c.events.next('disconnected');
  c.centrifuge.connect();
  const ev = await d;
  assert.equal(ev.code, 4501);
  assert.equal(ev.reason, 'banned');
  assert.equal(c.centrifuge.state, 'disconnected');
});

t('a connection token does not go to the connect proxy', async (ctx) => {
  const before = calls.length;
  const c = ctx.client({ token: connToken('bob') });
  const connected = await c.connect();
  assert.equal(connected.data, undefined);
  assert.equal(calls.slice(before).filter((x) => x.path === '/connect').length, 0);
  const r = await c.centrifuge.rpc('whoami', {});
  assert.equal(r.data.user, 'bob');
});
