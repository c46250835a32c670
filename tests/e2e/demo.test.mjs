// The demo client at `/` (issue 15, item 2), in two headless Chromium browsers whose sockets
// are on different nodes: a customer (A) places an order and watches it reach `approved`
// live; the admin (B) sees A's `order:created` and the pet's `pet:updated` arrive through
// another node; a chat message crosses between them both ways.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';

import { cluster, openBrowser, PATIENCE, screenshotPath } from './lib.mjs';

/** Waits until the page's socket is authenticated and subscribed; returns its node id. */
async function liveNode(page) {
  await page.waitForSelector('#connection[data-state="live"]');
  return page.getAttribute('#socket-node', 'data-node-id');
}

test('an order placed in one browser is seen live in another on a different node', { timeout: PATIENCE * 8 }, async (t) => {
  const { entryUrl, nodes, adminPassword } = cluster();
  const a = await openBrowser('a');
  const b = await openBrowser('b');
  t.after(() => Promise.all([a.close(), b.close()]));

  // A: through the balancer, like any visitor; registering logs in.
  const username = 'e2e_' + randomBytes(4).toString('hex');
  await a.page.goto(entryUrl + '/');
  assert.equal(await a.page.title(), 'petmesh demo');
  await a.page.click('#tab-register');
  await a.page.fill('#register-username', username);
  await a.page.fill('#register-email', `${username}@example.com`);
  await a.page.fill('#register-password', 'correct horse battery');
  await a.page.click('#register-form button[type="submit"]');
  const nodeA = await liveNode(a.page);
  assert.ok(nodes.has(nodeA), `A's socket is on ${nodeA}, one of ${[...nodes.keys()]}`);
  assert.equal(await a.page.textContent('#user-name'), username);

  // B: the admin, straight to a node other than the one serving A's socket.
  const [idB, urlB] = [...nodes].find(([id]) => id !== nodeA);
  await b.page.goto(urlB + '/');
  await b.page.fill('#login-username', 'admin');
  await b.page.fill('#login-password', adminPassword);
  await b.page.click('#login-form button[type="submit"]');
  const nodeB = await liveNode(b.page);
  assert.equal(nodeB, idB);
  assert.notEqual(nodeA, nodeB, 'the two sockets must be on different nodes');
  t.diagnostic(`browser A (${username}) socket on ${nodeA}, browser B (admin) socket on ${nodeB}`);

  // A filters the catalogue (the filters reach the API), picks an available pet and orders it.
  await a.page.selectOption('#filter-category', 'cats');
  await a.page.selectOption('#filter-status', 'available');
  await a.page.click('#pet-filters button[type="submit"]');
  await a.page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#pets tr[data-pet-id]')];
    return rows.length > 0 && rows.every((row) => row.dataset.status === 'available'
      && row.children[1].textContent === 'cats');
  });
  const pick = a.page.locator('#pets tr[data-status="available"]:has(button[data-action="select"]:not([disabled]))').first();
  const petId = await pick.getAttribute('data-pet-id');
  const stockBefore = Number(await pick.getAttribute('data-stock'));
  await pick.locator('button[data-action="select"]').click();
  await a.page.waitForSelector(`#order-pet[data-pet-id="${petId}"]`);
  await a.page.selectOption('#order-payment', 'tok_ok');
  // Every status #order-status shows, in order, from before the click on.
  await a.page.evaluate(() => {
    const box = document.querySelector('#order-status');
    window.seenStatuses = [];
    new MutationObserver(() => {
      const last = window.seenStatuses[window.seenStatuses.length - 1];
      if (box.dataset.status !== last) window.seenStatuses.push(box.dataset.status);
    }).observe(box, { attributes: true, attributeFilter: ['data-status'] });
  });
  await a.page.click('#place-order');
  await a.page.waitForSelector('#order-status[data-status="approved"]');
  const orderId = await a.page.getAttribute('#order-status', 'data-order-id');
  const seen = await a.page.evaluate(() => window.seenStatuses);
  assert.deepEqual(seen, ['placed', 'approved'], 'the order shows placed, then approved (from the socket)');
  t.diagnostic(`order ${orderId} for pet ${petId}: ${seen.join(' → ')} in browser A`);
  await a.page.waitForSelector(`#orders li[data-order-id="${orderId}"][data-status="approved"]`);
  await a.page.waitForSelector(`#feed li[data-event="order:updated"][data-order-id="${orderId}"]`);
  // The pet's row follows its pet:updated event: one unit fewer.
  await a.page.waitForSelector(`#pets tr[data-pet-id="${petId}"][data-stock="${stockBefore - 1}"]`);

  // B, on another node, saw both events of A's order, and the approval.
  await b.page.waitForSelector(`#feed li[data-event="order:created"][data-order-id="${orderId}"]`);
  await b.page.waitForSelector(`#feed li[data-event="pet:updated"][data-pet-id="${petId}"]`);
  await b.page.waitForSelector(`#feed li[data-event="order:updated"][data-order-id="${orderId}"]`);
  await b.page.waitForSelector(`#orders li[data-order-id="${orderId}"][data-status="approved"]`);

  // Chat: both are in the room `lobby`; a message each way crosses the nodes.
  await a.page.waitForSelector('#chat-room:text("lobby")');
  await b.page.waitForSelector('#chat-room:text("lobby")');
  const hello = `hello from ${username} on ${nodeA}`;
  await a.page.fill('#chat-input', hello);
  await a.page.press('#chat-input', 'Enter');
  await b.page.locator('#chat-messages li[data-event="room:message"] .text', { hasText: hello }).waitFor();
  await a.page.locator('#chat-messages li.mine .text', { hasText: hello }).waitFor();
  const reply = `welcome, from admin on ${nodeB}`;
  await b.page.fill('#chat-input', reply);
  await b.page.click('#chat-form button[type="submit"]');
  await a.page.locator('#chat-messages li[data-event="room:message"] .text', { hasText: reply }).waitFor();

  assert.deepEqual(a.problems, [], 'no script errors in A');
  assert.deepEqual(b.problems, [], 'no script errors in B');
  await a.page.screenshot({ path: screenshotPath('demo.png'), fullPage: true });
  await b.page.screenshot({ path: screenshotPath('demo-admin.png'), fullPage: true });
});
