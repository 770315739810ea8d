import { defineConfig } from 'vite';

// The dev server forwards the API and the real-time endpoints to a local hubbub
// (`cargo run -- serve`, 127.0.0.1:8000), so the UI runs same-origin as in production.
const backend = process.env.HUBBUB_URL ?? 'http://127.0.0.1:8000';

export default defineConfig({
  base: '/',
  // JSX without @vitejs/plugin-react: the compiler's automatic runtime, imported from Preact.
  // Vite 8 compiles TS/JSX with Oxc instead of esbuild; this is the Oxc spelling of esbuild's
  // `{ jsx: 'automatic', jsxImportSource: 'preact' }` (see README.md).
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2020',
    sourcemap: false,
    // One entry, no dynamic imports: no preload polyfill needed.
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
  server: {
    proxy: {
      '/api': backend,
      '/emulation': backend,
      '/health': backend,
      '/connection': { target: backend, ws: true },
    },
  },
});
