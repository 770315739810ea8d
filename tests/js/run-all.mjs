// Runs the centrifuge-js suite once per SDK transport, then the unidirectional /
// bad-input suite, the chat scenario and the README's snippets once each, and exits non-zero if any run failed.
//
//   node run-all.mjs                      # websocket, http_stream, sse, fallback + uni
//   MODES=sse,fallback node run-all.mjs   # only these transports (+ uni)
//   UNI=0 node run-all.mjs                # without uni.test.mjs
//   PROTOBUF=0 node run-all.mjs           # without protobuf.test.mjs (run on websocket and http_stream)
//   CHAT=0 node run-all.mjs               # without the chat scenario (chat.test.mjs)
//   README=0 node run-all.mjs             # without the README snippets (readme.test.mjs)
//   PROXY=0 node run-all.mjs              # without the proxies (proxy.test.mjs)
//
// Each run is `node --test --test-concurrency=1 --test-reporter=spec <file>` with env
// TRANSPORT set; the last line is the total over all runs.

import { spawn } from 'node:child_process';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const modes = (process.env.MODES || 'websocket,http_stream,sse,fallback')
  .split(',').map((m) => m.trim()).filter(Boolean);

const runs = modes.map((mode) => ({ label: `TRANSPORT=${mode}`, env: { TRANSPORT: mode }, files: ['compat.test.mjs'] }));
// centrifuge-js's protobuf build on the transports it offers protobuf on (not SSE).
if (process.env.PROTOBUF !== '0') {
  for (const mode of modes.filter((m) => m === 'websocket' || m === 'http_stream')) {
    runs.push({ label: `protobuf TRANSPORT=${mode}`, env: { TRANSPORT: mode }, files: ['protobuf.test.mjs'] });
  }
}
if (process.env.UNI !== '0') runs.push({ label: 'uni + bad input', env: {}, files: ['uni.test.mjs'] });
if (process.env.CHAT !== '0') runs.push({ label: 'chat scenario', env: { TRANSPORT: 'websocket' }, files: ['chat.test.mjs'] });
if (process.env.PROXY !== '0') runs.push({ label: 'proxies', env: {}, files: ['proxy.test.mjs'] });
if (process.env.README !== '0') runs.push({ label: 'README snippets', env: {}, files: ['readme.test.mjs'] });

function run({ label, env, files }) {
  return new Promise((resolve) => {
    process.stdout.write(`\n########## ${label}: node --test ${files.join(' ')} ##########\n`);
    const child = spawn(process.execPath,
      ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files],
      { cwd: here, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (chunk) => { out += chunk; process.stdout.write(chunk); });
    child.on('exit', (code, signal) => {
      const num = (name) => {
        const m = out.match(new RegExp(`^\\S*\\s*${name} (\\d+)\\s*$`, 'm'));
        return m ? Number(m[1]) : 0;
      };
      resolve({ label, code: code ?? 1, signal, pass: num('pass'), fail: num('fail'),
        cancelled: num('cancelled'), skipped: num('skipped') });
    });
  });
}

const results = [];
for (const r of runs) results.push(await run(r));

process.stdout.write('\n########## summary ##########\n');
let pass = 0; let fail = 0; let skipped = 0; let bad = false;
for (const r of results) {
  pass += r.pass; fail += r.fail + r.cancelled; skipped += r.skipped;
  if (r.code !== 0) bad = true;
  process.stdout.write(`${r.code === 0 ? 'ok  ' : 'FAIL'} ${r.label.padEnd(24)} pass ${r.pass}, fail ${r.fail}, cancelled ${r.cancelled}, skipped ${r.skipped}${r.signal ? `, signal ${r.signal}` : ''} (exit ${r.code})\n`);
}
if (bad && fail === 0) fail = 1; // a run that crashed without counting
process.stdout.write(`${pass} passed, ${fail} failed, ${skipped} skipped\n`);
process.exit(bad ? 1 : 0);
