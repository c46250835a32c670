// Shared helpers of the browser tests: the cluster scripts/test-e2e started (read from the
// environment), headless Chromium through playwright-core, screenshots.
//
// Nothing here sleeps to synchronise: tests wait for the page to reach a state (a selector,
// a condition) within a generous deadline, because the machine running them may be busy.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));

/** How long any one awaited state may take (ms): generous, the CI machine has two shared cores. */
export const PATIENCE = Number(process.env.PETMESH_E2E_PATIENCE_MS || 30000);

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run the browser tests with scripts/test-e2e, which starts a cluster`);
  }
  return value;
}

/** `a=1,b=2` → Map {a → '1', b → '2'}. */
function pairs(text) {
  return new Map(text.split(',').filter(Boolean).map((pair) => {
    const at = pair.indexOf('=');
    return [pair.slice(0, at), pair.slice(at + 1)];
  }));
}

/** The running cluster, as scripts/test-e2e describes it. */
export function cluster() {
  return {
    entryUrl: required('PETMESH_E2E_URL'),
    adminUrl: required('PETMESH_E2E_ADMIN_URL'),
    adminPassword: required('PETMESH_E2E_ADMIN_PASSWORD'),
    /** node id → base URL, node-1 first. */
    nodes: pairs(required('PETMESH_E2E_NODES')),
    /** node id → process id. */
    pids: new Map([...pairs(required('PETMESH_E2E_NODE_PIDS'))].map(([id, pid]) => [id, Number(pid)])),
  };
}

/** Where screenshots go: docs/screenshots/ of the repository unless told otherwise. */
export function screenshotPath(name) {
  const dir = process.env.PETMESH_E2E_SCREENSHOTS || resolve(here, '../../docs/screenshots');
  mkdirSync(dir, { recursive: true });
  return join(dir, name);
}

/** Chromium's flags: headless, and nothing that reaches for the network by itself. */
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage',
];

/**
 * One headless Chromium with a fresh profile of its own (a separate browser process, as two
 * people on two machines would have). `close()` ends it and removes the profile.
 */
export async function openBrowser(name, viewport = { width: 1440, height: 900 }) {
  const profile = mkdtempSync(join(tmpdir(), `petmesh-e2e-${name}-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.PETMESH_E2E_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
    timeout: PATIENCE * 2,
  });
  context.setDefaultTimeout(PATIENCE);
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  return {
    page,
    /** Script errors and console errors (a CSP violation is one) seen so far. */
    problems,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Milliseconds since `start` (a `performance.now()` value), to one decimal. */
export function since(start) {
  return Math.round((performance.now() - start) * 10) / 10;
}
