// Test harness: the real hubbub binary on a free port with a temporary data dir, the built web
// UI (served by hubbub itself when it embeds web/dist, else by a small same-origin proxy here),
// and Debian's Chromium driven by playwright-core (no browser download).

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '../..');
export const dist = join(repo, 'web', 'dist');
export const screenshots = join(here, 'screenshots');

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

export const TOKEN_SECRET = 'e2e-token-secret-that-is-long-enough-0123456789';

/** Starts `hubbub serve` with a fresh config and data dir; resolves once it listens.
 * `tokenSecret: null` leaves auth.token_secret out (the server generates one and keeps it
 * in its data dir). `restart(changes)` stops it and starts it again on the same address and
 * data dir, with `changes` to these options. */
export async function startServer(options = {}) {
  const { accessTokenTtl = '15m', tokenSecret = TOKEN_SECRET, listen = '127.0.0.1:0' } = options;
  const bin = process.env.HUBBUB_BIN ?? join(repo, 'target', 'debug', 'hubbub');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build -p hubbub-server\` first`);
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'hubbub-e2e-'));
  const config = join(dir, 'hubbub.toml');
  writeFileSync(
    config,
    [
      `listen = "${listen}"`,
      `data_dir = "${join(dir, 'data')}"`,
      '[auth]',
      ...(tokenSecret === null ? [] : [`token_secret = "${tokenSecret}"`]),
      'api_key = "e2e-api-key"',
      '[chat]',
      `access_token_ttl = "${accessTokenTtl}"`,
      // Tests write whole pages of history through REST at once (chat.send_burst is 20).
      'sends_per_second = 1000.0',
      'send_burst = 1000',
      '',
    ].join('\n'),
  );
  const child = spawn(bin, ['serve', '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', NO_COLOR: '1' },
  });
  const logs = [];
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`hubbub did not start:\n${logs.join('')}`)), 30_000);
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      logs.push(String(d));
      const m = /hubbub listening on (http:\/\/\S+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolveUrl(m[1]);
      }
    });
    child.stderr.on('data', (d) => logs.push(String(d)));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`hubbub exited with ${code}:\n${logs.join('')}`));
    });
  });
  const exit = async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          r();
        }, 5000);
        child.once('exit', () => {
          clearTimeout(t);
          r();
        });
      });
    }
  };
  return {
    url,
    logs,
    dir,
    async restart(changes = {}) {
      await exit();
      return startServer({ ...options, ...changes, dir, listen: new URL(url).host });
    },
    async stop() {
      await exit();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.webmanifest': 'application/manifest+json',
  '.txt': 'text/plain; charset=utf-8',
};

function backendPath(path) {
  return path.startsWith('/api/') || path.startsWith('/connection/') || path === '/emulation' || path === '/health';
}

/** Serves web/dist and forwards everything else (HTTP, streams and WebSocket upgrades) to the
 * server, keeping the Host header, so the browser sees a single origin, as in production. */
export async function startProxy(backend) {
  const target = new URL(backend);
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if ((req.method === 'GET' || req.method === 'HEAD') && !backendPath(path)) {
      let file = normalize(join(dist, decodeURIComponent(path)));
      if (!file.startsWith(dist) || !existsSync(file) || statSync(file).isDirectory()) file = join(dist, 'index.html');
      const hashed = path.startsWith('/assets/');
      res.writeHead(200, {
        'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
        'cache-control': hashed ? 'public, max-age=31536000, immutable' : 'no-cache',
      });
      res.end(req.method === 'HEAD' ? undefined : readFileSync(file));
      return;
    }
    const up = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        res.flushHeaders();
        upRes.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  server.on('upgrade', (req, socket, head) => {
    const up = net.connect(Number(target.port), target.hostname, () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(raw + '\r\n');
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  });
  server.requestTimeout = 0;
  server.timeout = 0;
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise((r) => {
        server.closeAllConnections?.();
        server.close(() => r());
      }),
  };
}

/** The UI's address: the server's own when it serves the built UI, else a proxy's. */
export async function uiFor(serverUrl) {
  if (!existsSync(join(dist, 'index.html'))) throw new Error('web/dist is missing: run `npm ci && npm run build` in web/');
  if (process.env.E2E_PROXY !== '1') {
    try {
      const res = await fetch(serverUrl + '/');
      const html = await res.text();
      if (html.includes('content="hubbub-web"')) return { url: serverUrl, stop: async () => {}, embedded: true };
    } catch {
      // fall through to the proxy
    }
  }
  const proxy = await startProxy(serverUrl);
  return { ...proxy, embedded: false };
}

/** One person: their own browser with a fresh profile (user-data-dir). */
export async function openBrowser(name, { viewport = DESKTOP, colorScheme = 'light' } = {}) {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup-browser.sh`);
  const dir = mkdtempSync(join(tmpdir(), `hubbub-e2e-${name}-`));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
    colorScheme,
    reducedMotion: 'reduce',
    locale: 'en-GB',
    timezoneId: 'UTC',
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  const watch = (p) => {
    p.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    p.on('console', (m) => {
      if (m.type() === 'error' && !/Failed to load resource|net::ERR_|WebSocket connection/.test(m.text())) {
        errors.push(`${name} console: ${m.text()}`);
      }
    });
  };
  watch(page);
  context.on('page', watch);
  return {
    name,
    context,
    page,
    errors,
    async close() {
      await context.close().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Saves a screenshot of the page at desktop and phone sizes (optionally set up per size). */
export async function shoot(page, name, { phone, desktop } = {}) {
  mkdirSync(screenshots, { recursive: true });
  const before = page.viewportSize() ?? DESKTOP;
  await page.setViewportSize(DESKTOP);
  if (desktop) await desktop();
  await settle(page);
  await page.screenshot({ path: join(screenshots, `${name}-desktop.png`) });
  await page.setViewportSize(PHONE);
  if (phone) await phone();
  await settle(page);
  await page.screenshot({ path: join(screenshots, `${name}-phone.png`) });
  await page.setViewportSize(before);
  await settle(page);
}

async function settle(page) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await page.waitForTimeout(150);
}
