// Every fenced snippet of the README, extracted and run in order, as a reader would: shell
// snippets with bash (curl against the real server a snippet started), JavaScript with node
// and the real centrifuge-js from this folder's node_modules. So the README cannot rot.
//
// Each fenced block of README.md is preceded by a marker comment saying how to run it:
//
//   <!-- snippet: sh -->                 bash, must exit 0; `# {json}` lines in it are the
//                                        expected output (same keys and types, any values)
//   <!-- snippet: server -->             bash in the background until it prints
//                                        "hubbub listening on"; stopped when the next server
//                                        snippet starts, or at the end
//   <!-- snippet: node -->               a Node ES module (`client.mjs`)
//   <!-- snippet: browser -->            browser code, run in Node with the browser's globals
//                                        (WebSocket, EventSource; fetch is Node's) and `token`
//                                        (env TOKEN) defined
//   <!-- snippet: skip reason="..." -->  not run, for the reason given
//
// Options: `background` (keep it running while the next snippets run), `ready="text"` (wait
// for this output before going on), `expect="text"` (this output must have appeared by the
// end). A background snippet must print nothing on stderr.
//
// As written for a reader, with two substitutions: `cargo run [-q] --release --` runs the
// binary under test (HUBBUB_BIN), and 127.0.0.1:8000 is a free port (also given as
// HUBBUB_LISTEN, for `serve` without a config file). All runs in a fresh folder.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { SERVER_BIN } from './harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const README = join(here, '../../README.md');
const READY_MS = 20_000;
const KINDS = new Set(['sh', 'server', 'node', 'browser', 'skip']);

/** The README's fenced blocks with their markers, in order; unmarked blocks are errors. */
export function extractSnippets(text) {
  const snippets = [];
  const unmarked = [];
  const fence = /^```(\w*)\n([\s\S]*?)^```\s*$/gm;
  let m;
  while ((m = fence.exec(text))) {
    const line = text.slice(0, m.index).split('\n').length;
    const before = text.slice(0, m.index).trimEnd();
    const marker = /<!--\s*snippet:\s*(\w+)((?:\s+[\w-]+(?:="[^"]*")?)*)\s*-->$/.exec(before);
    if (!marker) {
      unmarked.push(line);
      continue;
    }
    const options = {};
    for (const o of marker[2].matchAll(/([\w-]+)(?:="([^"]*)")?/g)) options[o[1]] = o[2] ?? true;
    snippets.push({ kind: marker[1], options, lang: m[1], code: m[2], line });
  }
  return { snippets, unmarked };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const BROWSER_PRELUDE = `// The browser's globals, in Node.
import __WebSocket from 'ws';
import { EventSource as __EventSource } from 'eventsource';
globalThis.WebSocket ??= __WebSocket;
globalThis.EventSource ??= __EventSource;
const token = process.env.TOKEN;
`;

/** A running snippet: its output so far, and a way to wait for some of it. */
function run(label, command, args, { cwd, env, detached = false }) {
  const child = spawn(command, args, { cwd, env, detached, stdio: ['ignore', 'pipe', 'pipe'] });
  const proc = { label, child, stdout: '', stderr: '', exit: null };
  const waiters = new Set();
  const wake = () => waiters.forEach((w) => w());
  child.stdout.on('data', (d) => { proc.stdout += d; wake(); });
  child.stderr.on('data', (d) => { proc.stderr += d; wake(); });
  proc.exited = new Promise((resolve) => child.on('close', (code, signal) => {
    proc.exit = { code, signal };
    wake();
    resolve(proc.exit);
  }));
  proc.waitFor = (text, ms = READY_MS) => new Promise((resolve, reject) => {
    const check = () => {
      if (proc.stdout.includes(text) || proc.stderr.includes(text)) {
        clearTimeout(timer);
        waiters.delete(check);
        resolve();
      } else if (proc.exit) {
        clearTimeout(timer);
        waiters.delete(check);
        reject(new Error(`${label} exited (${JSON.stringify(proc.exit)}) before printing ${JSON.stringify(text)}\n${describe(proc)}`));
      }
    };
    const timer = setTimeout(() => {
      waiters.delete(check);
      reject(new Error(`${label} did not print ${JSON.stringify(text)} within ${ms} ms\n${describe(proc)}`));
    }, ms);
    waiters.add(check);
    check();
  });
  proc.stop = async () => {
    if (proc.exit) return;
    try { process.kill(detached ? -child.pid : child.pid, 'SIGTERM'); } catch { /* gone */ }
    const timer = setTimeout(() => {
      try { process.kill(detached ? -child.pid : child.pid, 'SIGKILL'); } catch { /* gone */ }
    }, 5000);
    await proc.exited;
    clearTimeout(timer);
  };
  return proc;
}

function describe(proc) {
  return `--- stdout of ${proc.label}:\n${proc.stdout.slice(-3000)}\n--- stderr:\n${proc.stderr.slice(-3000)}`;
}

/** Whether `actual` has every key of `expected`, with values of the same types, recursively. */
function sameShape(expected, actual, path = '$') {
  const type = (v) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);
  assert.equal(type(actual), type(expected), `${path}: expected a ${type(expected)}, got ${JSON.stringify(actual)}`);
  if (type(expected) === 'array') {
    assert.ok(actual.length >= expected.length, `${path}: expected ${expected.length} items, got ${actual.length}`);
    expected.forEach((e, i) => sameShape(e, actual[i], `${path}[${i}]`));
  } else if (type(expected) === 'object') {
    for (const k of Object.keys(expected)) {
      assert.ok(k in actual, `${path}.${k} is missing in ${JSON.stringify(actual)}`);
      sameShape(expected[k], actual[k], `${path}.${k}`);
    }
  }
}

test('every README snippet is marked and works as written', { timeout: 180_000 }, async (t) => {
  const { snippets, unmarked } = extractSnippets(readFileSync(README, 'utf8'));
  assert.deepEqual(unmarked, [], 'README code blocks (at these lines) without a <!-- snippet: KIND --> marker');
  for (const s of snippets) {
    assert.ok(KINDS.has(s.kind), `README line ${s.line}: unknown snippet kind ${s.kind}`);
    if (s.kind === 'skip') assert.ok(typeof s.options.reason === 'string' && s.options.reason, `README line ${s.line}: a skipped snippet says why (reason="...")`);
  }
  assert.ok(snippets.filter((s) => s.kind === 'skip').length <= 2, 'keep the snippets that are not run to a minimum');

  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'hubbub-readme-'));
  // What `npm install centrifuge ws` gives a reader: this folder's packages.
  symlinkSync(join(here, 'node_modules'), join(dir, 'node_modules'), 'dir');
  let env = { ...process.env, HUBBUB_BIN: SERVER_BIN, HUBBUB_LISTEN: `127.0.0.1:${port}`, NO_COLOR: '1' };
  delete env.TOKEN;
  const substitute = (code) => code.replaceAll('127.0.0.1:8000', `127.0.0.1:${port}`)
    .replace(/cargo run (?:-q )?--release --/g, '"$HUBBUB_BIN"');
  let server = null;
  const background = [];
  try {
    for (const [i, s] of snippets.entries()) {
      const label = `README snippet at line ${s.line} (${s.kind})`;
      if (s.kind === 'skip') {
        t.diagnostic(`${label}: not run: ${s.options.reason}`);
        continue;
      }
      const code = substitute(s.code);
      if (s.kind === 'server') {
        if (server) await server.stop();
        server = run(label, 'bash', ['-euo', 'pipefail', '-c', code], { cwd: dir, env, detached: true });
        await server.waitFor(s.options.ready ?? 'hubbub listening on');
      } else if (s.kind === 'sh') {
        const envFile = join(dir, `.env-${i}`);
        const script = `${code}\nenv -0 > ${JSON.stringify(envFile)}\n`;
        const p = run(label, 'bash', ['-euo', 'pipefail', '-c', script], { cwd: dir, env });
        const { code: status } = await p.exited;
        assert.equal(status, 0, `${label} failed\n${describe(p)}`);
        env = Object.fromEntries(readFileSync(envFile, 'utf8').split('\0').filter(Boolean)
          .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
        const expected = code.split('\n').filter((l) => /^# [[{]/.test(l)).map((l) => JSON.parse(l.slice(2)));
        if (expected.length) {
          const lines = p.stdout.split('\n').filter((l) => l.trim());
          assert.equal(lines.length, expected.length, `${label}: expected ${expected.length} JSON lines\n${describe(p)}`);
          expected.forEach((e, k) => sameShape(e, JSON.parse(lines[k])));
        }
        t.diagnostic(`${label}: ok`);
      } else {
        const file = join(dir, `snippet-${i}.mjs`);
        writeFileSync(file, (s.kind === 'browser' ? BROWSER_PRELUDE : '') + code);
        const p = run(label, process.execPath, [file], { cwd: dir, env });
        if (s.options.ready) await p.waitFor(s.options.ready);
        if (s.options.background) {
          background.push({ p, s });
        } else {
          const { code: status } = await p.exited;
          assert.equal(status, 0, `${label} failed\n${describe(p)}`);
          if (s.options.expect) assert.ok(p.stdout.includes(s.options.expect), `${label}: no ${s.options.expect}\n${describe(p)}`);
        }
        t.diagnostic(`${label}: ok`);
      }
    }
    for (const { p, s } of background) {
      if (s.options.expect) await p.waitFor(s.options.expect, 10_000);
      assert.equal(p.exit, null, `${p.label} ended early\n${describe(p)}`);
      assert.equal(p.stderr, '', `${p.label} reported an error\n${describe(p)}`);
    }
  } finally {
    for (const { p } of background) await p.stop();
    if (server) await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
