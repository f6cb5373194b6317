// Runs against a real wacall service (embedded simulator, manual clock): tests/test_node_client.py starts one and
// gives its address in WACALL_ADDRESS (and its token in WACALL_TOKEN). The tests run in order and share the service:
// the second request is refused because the first was sent.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, errorDetails, status } from "../src/index.js";

const address = process.env.WACALL_ADDRESS;
const BUSINESS = "+447911123456";
const USER = "+34612345678";
const OTHER_USER = "+5511987654321";

let client;

before(() => {
  assert.ok(address, "WACALL_ADDRESS must name a running wacall service (see tests/test_node_client.py)");
  client = new Client(address, { token: process.env.WACALL_TOKEN, deadlineMs: 20_000 });
});

after(() => client?.close());

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("the call was expected to fail");
}

async function nextMatching(iterator, predicate, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no matching event within ${timeoutMs} ms`)), left);
    });
    const { value, done } = await Promise.race([iterator.next(), timeout]).finally(() => clearTimeout(timer));
    assert.equal(done, false, "the stream ended");
    if (predicate(value)) return value;
  }
}

test("a permission request answered by the simulated user is granted, and the watch stream shows it", async () => {
  const behavior = await client.setUserBehavior(USER, { onPermissionRequest: "ACCEPT_TEMPORARY" });
  assert.equal(behavior.onPermissionRequest, "ACCEPT_TEMPORARY");
  // From the pair's start, not onlyNew: the request may be recorded before the stream takes its starting point.
  const events = client.watchEvents({ businessNumber: BUSINESS, userNumber: USER });
  const first = nextMatching(events, (e) => e.kind === "EVENT_KIND_PERMISSION_REQUEST_SENT");
  const sent = await client.requestPermission(BUSINESS, USER, { idempotencyKey: "node-1" });
  assert.match(sent.messageId, /^wamid\./);
  assert.equal((await first).permissionState, "PERMISSION_STATE_REQUESTED");
  const granted = await nextMatching(events, (e) => e.kind === "EVENT_KIND_PERMISSION_GRANTED");
  assert.equal(granted.permissionState, "PERMISSION_STATE_TEMPORARY");
  assert.ok(granted.cursor);
  await events.return(); // leaving the stream cancels it
  const permission = await client.getPermission(BUSINESS, USER);
  assert.equal(permission.state, "PERMISSION_STATE_TEMPORARY");
});

test("a second request within 24 h is RESOURCE_EXHAUSTED, with a RetryInfo delay and the used-up quota", async () => {
  const err = await rejection(client.requestPermission(BUSINESS, USER, { idempotencyKey: "node-2" }));
  assert.equal(err.code, status.RESOURCE_EXHAUSTED);
  const details = errorDetails(err);
  assert.ok(details.retryDelay.seconds > 0, `a positive delay: ${JSON.stringify(details.retryDelay)}`);
  assert.ok(details.retryAfterMs <= 24 * 3600 * 1000 + 2000);
  assert.equal(details.quotaViolations.length, 1);
  assert.match(details.quotaViolations[0].description, /1 of 1 per 24 h/);
  // Time on the manual clock brings the retry closer by exactly as much.
  await client.advance(3600);
  const later = errorDetails(await rejection(client.requestPermission(BUSINESS, USER, { idempotencyKey: "node-3" })));
  assert.equal(later.retryAfterMs, details.retryAfterMs - 3600 * 1000);
});

test("a bad field comes back as BadRequest naming it; an unknown queue as ErrorInfo", async () => {
  const bad = errorDetails(await rejection(client.requestPermission(BUSINESS, OTHER_USER, { idempotencyKey: "k".repeat(200) })));
  assert.equal(bad.code, status.INVALID_ARGUMENT);
  assert.deepEqual(bad.fieldViolations.map((v) => v.field), ["idempotency_key"]);
  const missing = client.errorDetails(await rejection(client.unary(client.contactCenter, "GetQueue", { queueId: "nowhere" })));
  assert.equal(missing.code, status.NOT_FOUND);
  assert.equal(missing.errorInfo.reason, "unknown_queue");
});

test("a call without permission is FAILED_PRECONDITION with a PreconditionFailure", async () => {
  const refused = errorDetails(await rejection(client.startCall(BUSINESS, OTHER_USER)));
  assert.equal(refused.code, status.FAILED_PRECONDITION);
  assert.deepEqual(refused.preconditionViolations.map((v) => v.type), ["NO_PERMISSION"]);
  assert.equal(refused.retryDelay, null);
});

test("asking for TLS makes the client speak TLS (this service's port is plaintext, so the handshake fails)", async () => {
  const secure = new Client(address, { tls: true, token: process.env.WACALL_TOKEN, deadlineMs: 5_000 });
  try {
    const err = await rejection(secure.getPolicy());
    assert.equal(err.code, status.UNAVAILABLE);
  } finally {
    secure.close();
  }
  assert.equal((await client.getPolicy()).name, "seed");
});
