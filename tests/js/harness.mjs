// Test harness for the centrifuge-js compatibility suite.
//
// Starts the real `hubbub` binary with a generated TOML config, makes HS256 JWTs,
// calls the server HTTP API, builds Centrifuge clients for the transport under test
// (env TRANSPORT, default "websocket"), records the protocol frames of every client
// and waits for SDK events with timeouts. On a failing test the frames exchanged and
// the server's stderr are printed, so a failure says what the SDK sent and what the
// server answered.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test as nodeTest } from 'node:test';
import { Centrifuge } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';

const here = dirname(fileURLToPath(import.meta.url));

export const SERVER_BIN = process.env.HUBBUB_BIN
  ? resolve(process.env.HUBBUB_BIN)
  : resolve(here, '../../target/debug/hubbub');

export const TOKEN_SECRET = 'js-compat-token-secret';
export const API_KEY = 'js-compat-api-key';

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/** Namespace defaults used by the suite (the doc's example values, explicit). */
export function namespace(name, overrides = {}) {
  return {
    name,
    presence: true,
    join_leave: true,
    force_push_join_leave: false,
    history_size: 100,
    history_ttl: '10m',
    force_recovery: true,
    force_positioning: false,
    allow_publish_for_client: true,
    allow_subscribe_for_client: true,
    allow_presence_for_subscriber: true,
    allow_history_for_subscriber: true,
    ...overrides,
  };
}

/** The config every server of the suite starts from. */
export function defaultConfig() {
  return {
    listen: '127.0.0.1:0',
    shutdown_grace: '1s',
    auth: {
      token_secret: TOKEN_SECRET,
      api_key: API_KEY,
      allow_anonymous: false,
    },
    client: {
      ping_interval: '25s',
      pong_timeout: '8s',
    },
    namespaces: [
      namespace(''),
      // Recovery only when the client asks for it (recoverable: true).
      namespace('chat', { force_recovery: false }),
      // No presence, no history: presence/history calls answer 108.
      namespace('bare', { presence: false, join_leave: false, history_size: 0 }),
      // Clients may subscribe but not publish: publish answers 103.
      namespace('ro', { allow_publish_for_client: false }),
    ],
  };
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Deep merge for config overrides: objects merge, arrays and scalars replace. */
export function mergeConfig(base, overrides) {
  const out = { ...base };
  for (const [k, v] of Object.entries(overrides || {})) {
    if (isPlainObject(v) && isPlainObject(out[k])) {
      out[k] = mergeConfig(out[k], v);
    } else if (v === undefined) {
      delete out[k];
    } else {
      out[k] = v;
    }
  }
  return out;
}

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return '[' + v.map(tomlValue).join(', ') + ']';
  throw new Error('unsupported TOML value: ' + JSON.stringify(v));
}

/** Serializes the config: top-level scalars, then tables, then arrays of tables. */
export function toToml(config) {
  const lines = [];
  const tables = [];
  const arrays = [];
  for (const [k, v] of Object.entries(config)) {
    if (Array.isArray(v) && v.every(isPlainObject) && v.length > 0) arrays.push([k, v]);
    else if (isPlainObject(v)) tables.push([k, v]);
    else lines.push(`${k} = ${tomlValue(v)}`);
  }
  for (const [name, table] of tables) {
    lines.push('', `[${name}]`);
    for (const [k, v] of Object.entries(table)) lines.push(`${k} = ${tomlValue(v)}`);
  }
  for (const [name, items] of arrays) {
    for (const item of items) {
      lines.push('', `[[${name}]]`);
      for (const [k, v] of Object.entries(item)) lines.push(`${k} = ${tomlValue(v)}`);
    }
  }
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

const STARTUP_TIMEOUT_MS = 15000;
const MAX_STDERR = 256 * 1024;

/** Servers still running: stopped on process exit whatever happens. */
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/**
 * The address of a running cluster the suite targets instead of its own server
 * (`HUBBUB_URL=http://127.0.0.1:PORT`, set by scripts/test.sh around a cluster started with
 * scripts/cluster.sh behind HAProxy, with this suite's secrets and `clusterConfigToml()`).
 */
export const CLUSTER_URL = process.env.HUBBUB_URL || '';

/** The tables of defaultConfig() a cluster's nodes take (`--extra` of scripts/cluster.sh). */
export function clusterConfigToml() {
  const { client, namespaces } = defaultConfig();
  return toToml({ client, namespaces });
}

/** The cluster as a server object: the same fields as startServer()'s, nothing to stop. */
function clusterServer() {
  const u = new URL(CLUSTER_URL);
  const url = `${u.protocol}//${u.host}`;
  return {
    url,
    wsUrl: `${u.protocol === 'https:' ? 'wss' : 'ws'}://${u.host}/connection/websocket`,
    addr: u.host,
    apiKey: API_KEY,
    secret: TOKEN_SECRET,
    config: defaultConfig(),
    configPath: null,
    stderr: () => `(a cluster behind ${url}: see its nodes' logs, printed by scripts/test.sh on failure)`,
    exited: () => null,
    ...serverApi(url),
    async stop() { return null; },
  };
}

/**
 * Starts `hubbub serve --config <tmp>` with defaultConfig() merged with `overrides`.
 * Resolves once the server printed `hubbub listening on http://ADDR`.
 * Without `overrides` (a test file's shared server) and with `HUBBUB_URL` set, resolves with
 * that cluster instead; servers with settings of their own are always started locally.
 */
export async function startServer(overrides) {
  if (overrides === undefined && CLUSTER_URL) return clusterServer();
  return startLocalServer(overrides || {});
}

async function startLocalServer(overrides) {
  const dir = mkdtempSync(join(tmpdir(), 'hubbub-js-'));
  const config = mergeConfig(defaultConfig(), { data_dir: join(dir, 'data'), ...overrides });
  const configPath = join(dir, 'hubbub.toml');
  writeFileSync(configPath, toToml(config));

  const child = spawn(SERVER_BIN, ['serve', '--config', configPath], {
    cwd: dir,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);

  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    if (stderr.length > MAX_STDERR) stderr = stderr.slice(-MAX_STDERR);
    if (process.env.HUBBUB_JS_VERBOSE) process.stderr.write(chunk);
  });

  let exited = null;
  const exitPromise = new Promise((res) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      running.delete(child);
      res(exited);
    });
  });

  const addr = await new Promise((res, rej) => {
    let out = '';
    const timer = setTimeout(() => {
      rej(new Error(`server did not print its listening line within ${STARTUP_TIMEOUT_MS} ms\nstdout: ${out}\nstderr:\n${stderr}`));
    }, STARTUP_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      rej(new Error(`cannot start ${SERVER_BIN}: ${err.message} (build it with cargo build -p hubbub-server, or set HUBBUB_BIN)`));
    });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/^hubbub listening on http:\/\/(\S+)\s*$/m);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
    exitPromise.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`server exited before listening (code ${code}, signal ${signal})\nconfig:\n${toToml(config)}\nstderr:\n${stderr}`));
    });
  });

  const url = `http://${addr}`;
  const server = {
    url,
    wsUrl: `ws://${addr}/connection/websocket`,
    addr,
    apiKey: API_KEY,
    secret: TOKEN_SECRET,
    config,
    configPath,
    stderr: () => stderr,
    exited: () => exited,
    ...serverApi(url),
    async stop() {
      if (exited) return exited;
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 3000);
      const r = await exitPromise;
      clearTimeout(killer);
      try { rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
      return r;
    },
  };
  return server;
}

/**
 * The server API of the server at `url`: `api(method, body)` resolves with the parsed JSON
 * body (`{result}` or `{error}`); `apiOk` throws unless the answer is `{result}` and
 * resolves with the result.
 */
function serverApi(url) {
  return {
    api: (method, body = {}) => apiCall(url, API_KEY, method, body),
    apiOk: async (method, body = {}) => {
      const res = await apiCall(url, API_KEY, method, body);
      if (!res.body || !('result' in res.body) || res.body.error) {
        throw new Error(`API ${method} ${JSON.stringify(body)} answered HTTP ${res.status} ${JSON.stringify(res.body)}`);
      }
      return res.body.result;
    },
  };
}

/** POST /api/<method>; resolves with {status, body}. */
export async function apiCall(url, apiKey, method, body) {
  const res = await fetch(`${url}/api/${method}`, {
    method: 'POST',
    headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let parsed;
  try { parsed = JSON.parse(text); } catch { parsed = text; }
  return { status: res.status, body: parsed };
}

// ---------------------------------------------------------------------------
// Tokens (HS256 JWT)
// ---------------------------------------------------------------------------

function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

export function signJwt(payload, secret = TOKEN_SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(payload));
  const sig = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
  return `${header}.${body}.${sig}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

/**
 * Connection token. `ttl` in seconds (relative exp); `exp` absolute wins; `info` and
 * `channels` as the claims of the same name.
 */
export function connToken(user, { ttl, exp, info, channels, secret } = {}) {
  const claims = { sub: user };
  if (exp !== undefined) claims.exp = exp;
  else if (ttl !== undefined) claims.exp = nowSec() + ttl;
  if (info !== undefined) claims.info = info;
  if (channels !== undefined) claims.channels = channels;
  return signJwt(claims, secret);
}

/** Subscription token for `channel`. */
export function subToken(user, channel, { ttl, exp, info, secret } = {}) {
  const claims = { sub: user, channel };
  if (exp !== undefined) claims.exp = exp;
  else if (ttl !== undefined) claims.exp = nowSec() + ttl;
  if (info !== undefined) claims.info = info;
  return signJwt(claims, secret);
}

// ---------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------

/**
 * The transport under test: env TRANSPORT, default websocket.
 * - websocket, http_stream, sse: the SDK uses that transport only;
 * - fallback: the SDK gets [websocket (a path answering 404), http_stream, sse] and must
 *   fall back by itself to http_stream.
 */
export const TRANSPORT = process.env.TRANSPORT || 'websocket';

/** The SDK transport a connected client ends up on (`connected.transport`). */
export const EXPECTED_TRANSPORT = TRANSPORT === 'fallback' ? 'http_stream' : TRANSPORT;

/** True when the transport under test is a bidirectional emulation (HTTP) transport. */
export const EMULATION = EXPECTED_TRANSPORT !== 'websocket';

export const KNOWN_TRANSPORTS = ['websocket', 'http_stream', 'sse', 'fallback'];

const TRANSPORT_PATHS = {
  websocket: '/connection/websocket',
  http_stream: '/connection/http_stream',
  sse: '/connection/sse',
};

/** A path the server does not serve: the WebSocket of TRANSPORT=fallback fails on it (404). */
export const REFUSING_WS_PATH = '/connection/websocket-absent-for-fallback-test';

/** A WebSocket class (ws) that records every frame into `frames`. */
function recordingWebSocket(frames, sockets) {
  return class RecordingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
      this.addEventListener('message', (ev) => {
        frames.push({ t: Date.now(), dir: '<', data: String(ev.data) });
      });
      this.addEventListener('close', (ev) => {
        frames.push({ t: Date.now(), dir: '<', data: `[close ${ev.code} ${JSON.stringify(ev.reason)}]` });
      });
      this.addEventListener('error', (ev) => {
        frames.push({ t: Date.now(), dir: '<', meta: true, data: `[ws error ${ev.message || ev.error?.message || ''}]` });
      });
    }

    send(data) {
      frames.push({ t: Date.now(), dir: '>', data: String(data) });
      super.send(data);
    }
  };
}

/** Splits a byte stream into lines; `onLine` gets every complete line. */
function lineRecorder(onLine) {
  const decoder = new TextDecoder();
  let buf = '';
  return (chunk) => {
    buf += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim()) onLine(line);
    }
  };
}

/**
 * A fetch for the emulation transports that records what goes over it:
 * - the body of the stream request (the connect command) and the `data` of every
 *   `/emulation` POST as frames sent (`>`);
 * - every line of a streaming response (http_stream) as a frame received (`<`);
 * - a failed or unexpected HTTP answer as a meta frame.
 */
function recordingFetch(frames, onResponse = () => {}) {
  return async (input, init = {}) => {
    const url = String(input && input.url ? input.url : input);
    const isEmulation = /\/emulation(\?|$)/.test(url);
    if (init && init.body) {
      let data = String(init.body);
      if (isEmulation) {
        try { data = JSON.parse(data).data; } catch { /* keep raw */ }
      }
      frames.push({ t: Date.now(), dir: '>', data: String(data) });
    }
    let res;
    try {
      res = await fetch(input, init);
    } catch (e) {
      frames.push({ t: Date.now(), dir: '<', meta: true, data: `[fetch ${url} failed: ${e.message}]` });
      throw e;
    }
    onResponse(url, res);
    if (isEmulation) {
      if (res.status !== 204) {
        const text = await res.text().catch(() => '');
        frames.push({ t: Date.now(), dir: '<', meta: true, data: `[POST /emulation answered ${res.status} ${text.slice(0, 300)}]` });
        return new Response(text, { status: res.status, headers: res.headers });
      }
      return res;
    }
    if (!res.ok || !res.body) {
      frames.push({ t: Date.now(), dir: '<', meta: true, data: `[stream ${url} answered ${res.status}]` });
      return res;
    }
    // The SDK reads response.body.getReader(): hand it a reader that records every line.
    const record = lineRecorder((line) => frames.push({ t: Date.now(), dir: '<', data: line }));
    const body = res.body;
    return {
      ok: res.ok,
      status: res.status,
      statusText: res.statusText,
      headers: res.headers,
      url: res.url,
      body: {
        getReader() {
          const reader = body.getReader();
          return {
            async read() {
              const r = await reader.read();
              if (!r.done && r.value) record(r.value);
              if (r.done) frames.push({ t: Date.now(), dir: '<', data: '[close stream ended]' });
              return r;
            },
            cancel: (reason) => reader.cancel(reason),
            releaseLock: () => reader.releaseLock(),
            get closed() { return reader.closed; },
          };
        },
      },
    };
  };
}

/**
 * An EventSource class (npm `eventsource`) recording the connect command carried in the
 * URL (`cf_connect`) as a frame sent and every message event as a frame received.
 */
function recordingEventSource(frames) {
  return class RecordingEventSource extends EventSource {
    constructor(url, init) {
      super(url, init);
      try {
        const cf = new URL(String(url)).searchParams.get('cf_connect');
        if (cf) frames.push({ t: Date.now(), dir: '>', data: cf });
      } catch { /* not a URL: nothing to record */ }
    }

    get onmessage() { return super.onmessage; }

    set onmessage(fn) {
      super.onmessage = fn && ((ev) => {
        frames.push({ t: Date.now(), dir: '<', data: String(ev.data) });
        return fn.call(this, ev);
      });
    }

    get onerror() { return super.onerror; }

    set onerror(fn) {
      super.onerror = fn && ((ev) => {
        frames.push({ t: Date.now(), dir: '<', data: `[close eventsource error ${ev && (ev.code || '')} ${ev && ev.message ? ev.message : ''}]` });
        return fn.call(this, ev);
      });
    }
  };
}

/** Endpoint + transport dependencies for the Centrifuge constructor. */
export function transportSetup(server, frames, sockets, transport = TRANSPORT) {
  const deps = { websocket: recordingWebSocket(frames, sockets) };
  if (transport === 'websocket') {
    return { endpoint: server.wsUrl, deps };
  }
  if (!KNOWN_TRANSPORTS.includes(transport)) {
    throw new Error(`unsupported TRANSPORT=${transport} (known: ${KNOWN_TRANSPORTS.join(', ')})`);
  }
  deps.fetch = recordingFetch(frames);
  deps.readableStream = globalThis.ReadableStream;
  deps.eventsource = recordingEventSource(frames);
  deps.emulationEndpoint = `${server.url}/emulation`;
  if (transport === 'fallback') {
    return {
      endpoint: [
        { transport: 'websocket', endpoint: `ws://${server.addr}${REFUSING_WS_PATH}` },
        { transport: 'http_stream', endpoint: server.url + TRANSPORT_PATHS.http_stream },
        { transport: 'sse', endpoint: server.url + TRANSPORT_PATHS.sse },
      ],
      deps,
    };
  }
  return {
    endpoint: [{ transport, endpoint: server.url + TRANSPORT_PATHS[transport] }],
    deps,
  };
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

export const DEFAULT_WAIT_MS = 4000;

/**
 * Records the given events of an EventEmitter (Centrifuge or Subscription) from the
 * moment it is created, so an event emitted before a test starts waiting is not lost.
 */
export class EventLog {
  constructor(emitter, events, label = '') {
    this.label = label;
    this.entries = [];
    this.waiters = [];
    for (const name of events) {
      emitter.on(name, (ctx) => {
        const entry = { name, ctx, t: Date.now(), taken: false };
        this.entries.push(entry);
        this._notify();
      });
    }
  }

  _notify() {
    for (const w of [...this.waiters]) {
      const entry = this.entries.find((e) => !e.taken && e.name === w.name && w.pred(e.ctx));
      if (entry) {
        entry.taken = true;
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(entry.ctx);
      }
    }
  }

  /** Resolves with the first recorded, not yet taken `name` event matching `pred`. */
  next(name, pred = () => true, timeout = DEFAULT_WAIT_MS) {
    return new Promise((res, rej) => {
      const w = { name, pred, resolve: res };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        rej(new Error(`timeout (${timeout} ms) waiting for ${this.label ? this.label + ' ' : ''}'${name}' event; events so far: ${this.describe()}`));
      }, timeout);
      this.waiters.push(w);
      this._notify();
    });
  }

  /** Collects `count` `name` events (taking them). */
  async take(name, count, pred = () => true, timeout = DEFAULT_WAIT_MS) {
    const deadline = Date.now() + timeout;
    const out = [];
    for (let i = 0; i < count; i++) {
      const left = Math.max(1, deadline - Date.now());
      try {
        out.push(await this.next(name, pred, left));
      } catch (e) {
        e.message = `got ${out.length} of ${count}: ${e.message}`;
        throw e;
      }
    }
    return out;
  }

  all(name) {
    return this.entries.filter((e) => e.name === name).map((e) => e.ctx);
  }

  count(name) {
    return this.entries.filter((e) => e.name === name).length;
  }

  describe() {
    return JSON.stringify(this.entries.map((e) => ({ [e.name]: summarize(e.ctx) })));
  }
}

function summarize(ctx) {
  if (!ctx || typeof ctx !== 'object') return ctx;
  const out = {};
  for (const [k, v] of Object.entries(ctx)) {
    if (k === 'transport' && typeof v === 'object') continue;
    out[k] = v instanceof Error ? v.message : v;
  }
  return out;
}

export class TimeoutError extends Error {}

/** Rejects after `ms` with a TimeoutError naming `what` unless `promise` settles first. */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    Promise.resolve(promise).finally(() => clearTimeout(timer)),
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new TimeoutError(`timeout (${ms} ms): ${what}`)), ms);
    }),
  ]);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves with the rejection reason of `promise`; fails if it resolves or hangs. */
export async function rejection(promise, what, ms = DEFAULT_WAIT_MS) {
  let value;
  try {
    value = await withTimeout(promise, ms, what);
  } catch (e) {
    if (e instanceof TimeoutError) throw e;
    return e;
  }
  throw new Error(`${what}: expected an error, got ${JSON.stringify(value)}`);
}

/** Polls `fn` until it returns a truthy value. */
export async function eventually(fn, what, timeout = DEFAULT_WAIT_MS, every = 50) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timeout (${timeout} ms) waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    }
    await sleep(every);
  }
}

// ---------------------------------------------------------------------------
// Test context: server + clients + diagnostics
// ---------------------------------------------------------------------------

const CLIENT_EVENTS = ['state', 'connecting', 'connected', 'disconnected', 'error',
  'message', 'subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave'];
const SUB_EVENTS = ['state', 'subscribing', 'subscribed', 'unsubscribed', 'error',
  'publication', 'join', 'leave'];

/**
 * Per-test context. `ctx.client(opts)` makes a Centrifuge client for the server with
 * frame recording; everything made is torn down by close().
 */
export class Ctx {
  constructor(server, name) {
    this.server = server;
    this.name = name;
    this.clients = [];
    this.startedAt = Date.now();
    this.ownServers = [];
    this.notes = [];
    this.cleanups = [];
  }

  /** Starts an extra server for this test only (config overrides); stopped by close(). */
  async startServer(overrides) {
    const s = await startServer(overrides);
    this.ownServers.push(s);
    return s;
  }

  /**
   * New Centrifuge client. Options: `user` (makes a connection token unless `token`
   * is given), `tokenOpts`, `server`, `label`, `protobuf` (the SDK's protobuf build: binary
   * frames, payloads as Uint8Array), plus any Centrifuge option.
   */
  client({ user, tokenOpts, server, label, transport, protobuf, ...options } = {}) {
    const srv = server || this.server;
    const frames = [];
    const sockets = [];
    const { endpoint, deps } = transportSetup(srv, frames, sockets, transport);
    const opts = {
      ...deps,
      minReconnectDelay: 100,
      maxReconnectDelay: 1000,
      timeout: 3000,
      ...options,
    };
    if (user !== undefined && opts.token === undefined && opts.getToken === undefined) {
      opts.token = connToken(user, tokenOpts);
    }
    const centrifuge = new (protobuf ? CentrifugeProtobuf : Centrifuge)(endpoint, opts);
    const name = label || `client${this.clients.length + 1}${user !== undefined ? `(${user})` : ''}`;
    const events = new EventLog(centrifuge, CLIENT_EVENTS, name);
    const c = { centrifuge, events, frames, sockets, name, subs: [] };
    // Unhandled 'error' events must not throw (EventEmitter semantics): log them.
    c.sub = (channel, subOpts) => {
      const sub = centrifuge.newSubscription(channel, subOpts);
      const log = new EventLog(sub, SUB_EVENTS, `${name} sub ${channel}`);
      c.subs.push({ sub, events: log });
      return { sub, events: log };
    };
    /** Connects and waits for `connected`; resolves with its context. */
    c.connect = async (timeout = DEFAULT_WAIT_MS) => {
      const p = events.next('connected', () => true, timeout);
      centrifuge.connect();
      const connected = await p;
      c.id = connected.client;
      return connected;
    };
    /** Abruptly kills the current transport (like a network drop). */
    c.dropTransport = () => {
      const ws = sockets[sockets.length - 1];
      if (ws && ws.readyState === WebSocket.OPEN) {
        ws.terminate();
        return;
      }
      // Emulation transports: close the SDK's transport object.
      // eslint-disable-next-line no-underscore-dangle
      if (centrifuge._transport) centrifuge._transport.close();
    };
    this.clients.push(c);
    return c;
  }

  /** Connected client with a subscription, both ready. */
  async subscribed(user, channel, subOpts = {}, clientOpts = {}) {
    const c = this.client({ user, ...clientOpts });
    await c.connect();
    const s = c.sub(channel, subOpts);
    const subscribedP = s.events.next('subscribed');
    s.sub.subscribe();
    const ctx = await subscribedP;
    return { c, ...s, ctx };
  }

  note(msg) {
    this.notes.push(msg);
  }

  /** Registers a cleanup run by close(). */
  onClose(fn) {
    this.cleanups.push(fn);
  }

  diagnostics() {
    const lines = [];
    for (const c of this.clients) {
      lines.push(`--- frames of ${c.name} (> sent by SDK, < received from server) ---`);
      for (const f of c.frames.slice(-60)) {
        lines.push(`${String(f.t - this.startedAt).padStart(6)}ms ${f.dir} ${f.data.length > 800 ? f.data.slice(0, 800) + '…' : f.data}`);
      }
      lines.push(`--- events of ${c.name}: ${c.events.describe()}`);
      for (const s of c.subs) lines.push(`--- events of ${s.events.label}: ${s.events.describe()}`);
    }
    for (const n of this.notes) lines.push(`note: ${n}`);
    const servers = [this.server, ...this.ownServers].filter(Boolean);
    for (const s of servers) {
      const err = s.stderr();
      lines.push(`--- server ${s.addr} stderr (last 4000 chars) ---`);
      lines.push(err.slice(-4000));
    }
    return lines.join('\n');
  }

  async close() {
    for (const fn of this.cleanups) {
      try { await fn(); } catch { /* ignore */ }
    }
    for (const c of this.clients) {
      try { c.centrifuge.disconnect(); } catch { /* ignore */ }
      for (const ws of c.sockets) {
        try { ws.terminate(); } catch { /* ignore */ }
      }
    }
    for (const s of this.ownServers) await s.stop();
  }
}

/**
 * Defines a node:test test with a Ctx bound to `getServer()`'s server. On failure the
 * frames, SDK events and server stderr are printed. `opts.timeout` bounds the test.
 */
export function compatTest(name, fn, { getServer = () => null, timeout = 15000, skip } = {}) {
  nodeTest(name, { timeout, skip }, async () => {
    const ctx = new Ctx(getServer(), name);
    try {
      await fn(ctx);
    } catch (err) {
      process.stderr.write(`\n===== diagnostics for failed test "${name}" =====\n${ctx.diagnostics()}\n===== end diagnostics =====\n`);
      throw err;
    } finally {
      await ctx.close();
    }
  });
}

/** Frames (parsed JSON objects) a client sent / received, split on newlines. */
export function parsedFrames(c, dir) {
  const out = [];
  for (const f of c.frames) {
    if (f.dir !== dir || f.meta || f.data.startsWith('[close')) continue;
    for (const line of f.data.split('\n')) {
      if (!line.trim()) continue;
      try { out.push(JSON.parse(line)); } catch { out.push({ unparsable: line }); }
    }
  }
  return out;
}

export { Centrifuge, WebSocket, EventSource };
