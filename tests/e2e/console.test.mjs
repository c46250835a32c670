// The cluster console on the balancer's admin port at `/` (issue 15, item 1), against its DOM
// contract: `<table id="nodes">` with one `<tr data-node-id data-healthy data-status
// data-breaker>` per node, `#node-count`, `<ol id="events">`, and `#connection` reading `live`
// while it is connected. A node SIGKILLed must show as unhealthy within 3 s.
//
// Runs after the demo test: it kills a node of the shared cluster.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { cluster, openBrowser, PATIENCE, screenshotPath, since } from './lib.mjs';

/** The most a SIGKILLed node may take to be shown unhealthy (issue 15). */
const UNHEALTHY_WITHIN_MS = 3000;

test('the console lists every node and shows a killed one unhealthy within 3 s', { timeout: PATIENCE * 6 }, async (t) => {
  const { adminUrl, entryUrl, nodes, pids } = cluster();
  const probe = await fetch(adminUrl + '/');
  assert.equal(probe.status, 200, `GET ${adminUrl}/`);
  assert.match(probe.headers.get('content-type') || '', /^text\/html/);

  const browser = await openBrowser('console');
  t.after(() => browser.close());
  const { page } = browser;
  await page.goto(adminUrl + '/');
  await page.waitForFunction(() => document.querySelector('#connection')?.textContent.trim() === 'live');
  await page.waitForSelector('ol#events', { state: 'attached' });

  // Every node, healthy, once each.
  const ids = [...nodes.keys()];
  await page.waitForFunction((expected) => {
    const rows = [...document.querySelectorAll('table#nodes tr[data-node-id]')];
    const shown = rows.map((row) => row.dataset.nodeId).sort();
    return JSON.stringify(shown) === JSON.stringify([...expected].sort())
      && rows.every((row) => row.dataset.healthy === 'true' && row.dataset.status === 'ready');
  }, ids);
  const count = await page.textContent('#node-count');
  assert.match(count, new RegExp(`\\b${ids.length}\\b`), `#node-count reads ${JSON.stringify(count)}`);
  for (const id of ids) {
    const breaker = await page.getAttribute(`table#nodes tr[data-node-id="${id}"]`, 'data-breaker');
    assert.ok(breaker, `node ${id} shows its breaker state`);
  }

  // Some traffic through the balancer, so that rates, p99s and their graphs show something.
  const traffic = sendTraffic(entryUrl);
  t.after(() => traffic.stop());
  // Every node taking some, with a few seconds of history in its graph.
  await page.waitForFunction(() => [...document.querySelectorAll('table#nodes tr[data-node-id]')]
    .every((row) => Number(row.querySelector('td[data-cell="rate"]')?.textContent) > 0
      && Number(/^last (\d+) s/.exec(row.querySelector('td[data-cell="spark"] title')?.textContent)?.[1]) >= 8));

  // SIGKILL the last node: no drain, no goodbye.
  const victim = ids[ids.length - 1];
  const pid = pids.get(victim);
  assert.ok(pid > 0, `pid of ${victim}`);
  const killedAt = performance.now();
  process.kill(pid, 'SIGKILL');
  await page.waitForSelector(`table#nodes tr[data-node-id="${victim}"][data-healthy="false"]`, {
    timeout: Math.max(PATIENCE, 10000),
  });
  const elapsed = since(killedAt);
  t.diagnostic(`${victim} (pid ${pid}) SIGKILLed; its row showed data-healthy="false" after ${elapsed} ms`);
  console.log(`console: ${victim} shown unhealthy ${(elapsed / 1000).toFixed(2)} s after SIGKILL`);
  // The others are unaffected.
  for (const id of ids.filter((id) => id !== victim)) {
    assert.equal(await page.getAttribute(`table#nodes tr[data-node-id="${id}"]`, 'data-healthy'), 'true', id);
  }
  assert.deepEqual(browser.problems, [], 'no script errors in the console');
  // The next snapshot counts one node fewer taking work.
  await page.waitForFunction((n) => document.querySelector('#eligible-count')?.textContent.trim() === String(n), ids.length - 1);
  await page.screenshot({ path: screenshotPath('console.png'), fullPage: true });
  assert.ok(elapsed <= UNHEALTHY_WITHIN_MS, `shown unhealthy after ${elapsed} ms, more than ${UNHEALTHY_WITHIN_MS} ms`);
});

/**
 * Catalogue reads through the balancer, a few at a time, until `stop()` (which waits for the
 * last ones). Failures are ignored: a node is killed meanwhile and retries are not this test's
 * subject.
 */
function sendTraffic(entryUrl) {
  let running = true;
  const worker = async () => {
    while (running) {
      try {
        const response = await fetch(entryUrl + '/api/v1/pets/findByStatus?status=available');
        await response.arrayBuffer();
      } catch {
        // ignored, see above
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  const workers = Promise.all([worker(), worker()]);
  return {
    async stop() {
      running = false;
      await workers;
    },
  };
}
