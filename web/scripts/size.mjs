// Prints the gzip size of what the first load fetches (every JS and CSS file in dist/assets,
// all loaded by index.html) and fails when the JavaScript is over the budget.
import { readdirSync, readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';

const BUDGET_JS = 150 * 1024;
const dir = new URL('../dist/assets/', import.meta.url).pathname;
let js = 0;
let css = 0;
for (const f of readdirSync(dir).sort()) {
  const raw = readFileSync(join(dir, f));
  const gz = gzipSync(raw, { level: 9 }).length;
  console.log(`${f.padEnd(32)} ${String(raw.length).padStart(8)} B  gzip ${String(gz).padStart(7)} B`);
  if (f.endsWith('.js')) js += gz;
  if (f.endsWith('.css')) css += gz;
}
console.log(`first load: JS ${(js / 1024).toFixed(1)} KiB gzip, CSS ${(css / 1024).toFixed(1)} KiB gzip (JS budget 150 KiB)`);
if (js > BUDGET_JS) {
  console.error('JavaScript over budget');
  process.exit(1);
}
