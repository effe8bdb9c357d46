// Browser tests: the real gifts binary, driven through Debian's chromium by
// playwright-core (which downloads no browser).
//
//   cd tests/browser && npm ci && node run.mjs
//
// Starts the binary (GIFTS_BIN, default ../../target/debug/gifts) on a free
// loopback port with a temporary store, runs every test below against it,
// saves screenshots in ../../target/browser/, and exits non-zero on any
// failure. Each test prints one line.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../..');
const binary = process.env.GIFTS_BIN ?? join(repo, 'target/debug/gifts');
const shots = join(repo, 'target/browser');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

async function waitReady(base, child) {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`gifts exited with ${child.exitCode}`);
    try {
      const response = await fetch(`${base}/readyz`);
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('gifts did not become ready');
}

/** The real service on a temporary store; `stop()` kills it and removes the store. */
export async function startService(args = [], env = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'gifts-browser-'));
  const port = await freePort();
  const child = spawn(binary, [
    '--listen', `127.0.0.1:${port}`, '--storage', `sqlite:${join(dir, 'gifts.db')}`, ...args,
  ], { env: { ...process.env, RUST_LOG: 'warn', GIFTS_SHUTDOWN_DRAIN_SECS: '0', ...env }, stdio: ['ignore', 'ignore', 'inherit'] });
  const base = `http://127.0.0.1:${port}`;
  await waitReady(base, child);
  return {
    base,
    stop() {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const tests = [];
export function test(name, body) {
  tests.push({ name, body });
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

test('the docs page lists every operation and "Try it out" on GET /health gets 200', async ({ page, service }) => {
  await page.goto(`${service.base}/docs/`);
  await page.waitForSelector('.opblock', { timeout: 20_000 });
  const operations = await page.$$eval('.opblock .opblock-summary-path', (nodes) =>
    nodes.map((n) => n.textContent.replace(/\u200b/g, '').trim()));
  for (const path of ['/imports', '/imports/{import_id}/citizens', '/imports/{import_id}/citizens/birthdays',
    '/imports/{import_id}/towns/stat/percentile/age', '/imports/{import_id}/citizens/{citizen_id}', '/health', '/metrics']) {
    check(operations.includes(path), `${path} is not listed: ${operations.join(', ')}`);
  }
  check(operations.length >= 12, `${operations.length} operations listed`);
  const health = page.locator('.opblock', { has: page.locator('.opblock-summary-path', { hasText: /^\/health$/ }) });
  await health.locator('.opblock-summary').click();
  await health.locator('button.try-out__btn').click();
  await health.locator('button.execute').click();
  const status = health.locator('.live-responses-table tbody .response-col_status').first();
  await status.waitFor({ timeout: 10_000 });
  await status.scrollIntoViewIfNeeded();
  const code = (await status.textContent()).trim();
  check(code === '200', `Try it out answered ${code}`);
  await page.screenshot({ path: join(shots, 'docs.png'), fullPage: false });
});

/** A token with every scope, from `gifts token new`, and its tokens file. */
function tokensFile() {
  const dir = mkdtempSync(join(tmpdir(), 'gifts-tokens-'));
  const out = execFileSync(binary, ['token', 'new', '--name', 'browser', '--scopes', 'read,write,delete,admin']).toString();
  const lines = out.split('\n').map((l) => l.trim()).filter(Boolean);
  const token = lines.find((l) => l.startsWith('gifts_'));
  const line = lines[lines.length - 1];
  const path = join(dir, 'tokens');
  writeFileSync(path, `${line}\n`);
  return { token, path };
}

async function tryItOut(page, method, path) {
  const block = page.locator(`.opblock-${method}`, { has: page.locator('.opblock-summary-path', { hasText: new RegExp(`^${path.replace(/[{}/]/g, '\\$&')}$`) }) });
  const tryOut = block.locator('button.try-out__btn');
  if (!(await tryOut.isVisible())) {
    await block.locator('.opblock-summary').click();
  }
  await tryOut.waitFor({ timeout: 10_000 });
  if ((await tryOut.textContent()).trim() === 'Try it out') {
    await tryOut.click();
  }
  await block.locator('button.execute').click();
  const status = block.locator('.live-responses-table tbody .response-col_status').first();
  await status.waitFor({ timeout: 10_000 });
  await status.scrollIntoViewIfNeeded();
  const code = (await status.textContent()).trim();
  await block.locator('button.btn-clear').click().catch(() => {});
  return code;
}

test('with --tokens-file, Authorize on the docs page lets Try it out through', async ({ page, browser }) => {
  const { token, path } = tokensFile();
  const service = await startService(['--tokens-file', path]);
  try {
    await page.goto(`${service.base}/docs/`);
    await page.waitForSelector('.opblock', { timeout: 20_000 });
    const before = await tryItOut(page, 'get', '/imports');
    check(before === '401', `without a token: ${before}`);
    await page.locator('button.authorize').first().click();
    await page.locator('.modal-ux input[type=text], .modal-ux input[type=password]').first().fill(token);
    await page.locator('.modal-ux button.authorize').click();
    await page.locator('.modal-ux button.btn-done, .modal-ux button.close-modal').first().click();
    const after = await tryItOut(page, 'get', '/imports');
    check(after === '200', `with the token: ${after}`);
    await page.screenshot({ path: join(shots, 'docs-authorized.png') });
  } finally {
    service.stop();
  }
});

async function main() {
  mkdirSync(shots, { recursive: true });
  const only = process.argv.slice(2);
  const browser = await chromium.launch({ executablePath: chromiumPath, args: FLAGS, headless: true });
  let failed = 0;
  const started = Date.now();
  try {
    for (const { name, body } of tests) {
      if (only.length && !only.some((o) => name.includes(o))) continue;
      const service = await startService();
      const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      const page = await context.newPage();
      const t = Date.now();
      try {
        await body({ page, service, browser });
        console.log(`ok   ${name} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
      } catch (e) {
        failed += 1;
        console.log(`FAIL ${name}: ${e.message}`);
        await page.screenshot({ path: join(shots, `failed-${failed}.png`) }).catch(() => {});
      } finally {
        await context.close();
        service.stop();
      }
    }
  } finally {
    await browser.close();
  }
  console.log(`${tests.length - failed} passed, ${failed} failed (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  process.exit(failed ? 1 : 0);
}

await main();
