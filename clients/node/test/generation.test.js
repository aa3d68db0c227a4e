'use strict';
// Against a running server: STRATA_ADDRESS is its address and STRATA_EXPECTED a JSON file
// {"prompt": [ids], "max_tokens": n, "tokens": [ids]} with the greedy tokens the Python client
// got for that prompt. tests/system/test_node_client.py starts `strata up` and sets both;
// without them these tests are skipped (and that test fails on a skip).
const fs = require('node:fs');
const test = require('node:test');
const assert = require('node:assert/strict');
const { connect, status } = require('../strata.js');

const ADDRESS = process.env.STRATA_ADDRESS;
const EXPECTED_PATH = process.env.STRATA_EXPECTED;
const SKIP = ADDRESS && EXPECTED_PATH ? false
  : 'set STRATA_ADDRESS and STRATA_EXPECTED (tests/system/test_node_client.py does)';
const CALL_TIMEOUT_MS = 60_000;
const FREE_TIMEOUT_MS = 5_000;

function greedyRequest(prompt, maxTokens) {
  return {
    tokens: { ids: prompt },
    sampling: { temperature: 0 },
    stopping: { max_tokens: maxTokens, ignore_eos: true },
  };
}

function deadline() {
  return { deadline: Date.now() + CALL_TIMEOUT_MS };
}

async function collectTokens(stream) {
  const tokens = [];
  let last = null;
  for await (const response of stream) {
    tokens.push(...response.token_ids);
    last = response;
  }
  return { tokens, last };
}

async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail('the call succeeded');
}

/** Polls GetStats until the predicate holds; the last Stats, or a failure naming `what`. */
async function waitForStats(client, predicate, what) {
  const giveUpAt = Date.now() + FREE_TIMEOUT_MS;
  let stats = await client.getStats();
  while (!predicate(stats)) {
    assert.ok(Date.now() < giveUpAt, `${what} within ${FREE_TIMEOUT_MS} ms: ${JSON.stringify(stats)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
    stats = await client.getStats();
  }
  return stats;
}

function isIdle(stats) {
  return stats.num_running === 0 && stats.num_free_device_blocks === stats.num_device_blocks;
}

/**
 * The longest request `prompt` may start (the model's length and the device pool both bound
 * it), and the server's Stats before it starts.
 */
async function longRequestStart(client, prompt) {
  const [info, before] = await Promise.all([client.getModelInfo(), client.getStats()]);
  const capacity = Math.min(info.max_model_len, before.num_device_blocks * info.block_size);
  return { maxTokens: capacity - prompt.length, before };
}

/**
 * Waits until every device block is free again, and checks that the cancel freed them, not the
 * request running to its end: on the tiny test model all max_tokens take about 2 s, well inside
 * the wait, but they take one step each and an aborted request stops after a few.
 */
async function waitUntilFreedByAbort(client, before, maxTokens) {
  const idle = await waitForStats(client, isIdle, 'every device block free');
  const numSteps = idle.num_steps - before.num_steps;
  assert.ok(numSteps < maxTokens / 2, `${numSteps} steps for ${maxTokens} tokens: it was not aborted`);
  return idle;
}

test('the server over a Node client', { skip: SKIP }, async (t) => {
  const expected = JSON.parse(fs.readFileSync(EXPECTED_PATH, 'utf8'));
  const client = connect(ADDRESS);
  t.after(() => client.close());

  await t.test('a greedy Generate streams the tokens the Python client got', async () => {
    const stream = client.generate(greedyRequest(expected.prompt, expected.max_tokens), deadline());
    const { tokens, last } = await collectTokens(stream);
    assert.deepEqual(tokens, expected.tokens);
    assert.equal(last.finish_reason, 'FINISH_REASON_LENGTH');
    assert.equal(last.usage.completion_tokens, expected.max_tokens);
  });

  await t.test('a negative temperature is INVALID_ARGUMENT naming the field', async () => {
    const request = greedyRequest(expected.prompt, expected.max_tokens);
    request.sampling.temperature = -1;
    const error = await rejection(collectTokens(client.generate(request, deadline())));
    assert.equal(error.code, status.INVALID_ARGUMENT);
    assert.match(error.details, /sampling\.temperature/);
  });

  await t.test('max_tokens 0 is INVALID_ARGUMENT naming the field, also when read late', async () => {
    const stream = client.generate(greedyRequest(expected.prompt, 0), deadline());
    // The call has failed before the loop starts (events.once would reject on its 'error').
    await new Promise((resolve) => stream.call.once('status', resolve));
    const error = await rejection(collectTokens(stream));
    assert.equal(error.code, status.INVALID_ARGUMENT);
    assert.match(error.details, /stopping\.max_tokens/);
  });

  await t.test('a stream cancelled after its first response frees every device block', async () => {
    const { maxTokens, before } = await longRequestStart(client, expected.prompt);
    const stream = client.generate(greedyRequest(expected.prompt, maxTokens), deadline());
    const finishReasons = [];
    let held = null;
    for await (const response of stream) {
      finishReasons.push(response.finish_reason);
      if (held === null) {
        held = await client.getStats();
        stream.cancel();   // responses already received may still be read after this
      }
    }
    assert.ok(held.num_free_device_blocks < held.num_device_blocks, 'the request held no block');
    assert.ok(!finishReasons.includes('FINISH_REASON_LENGTH'), 'it finished before the cancel');
    const idle = await waitUntilFreedByAbort(client, before, maxTokens);
    assert.equal(idle.num_waiting, 0);
  });

  await t.test('a stream cancelled before it is read ends quietly and frees its blocks', async () => {
    const { maxTokens, before } = await longRequestStart(client, expected.prompt);
    const stream = client.generate(greedyRequest(expected.prompt, maxTokens), deadline());
    stream.cancel();
    await collectTokens(stream);
    await waitUntilFreedByAbort(client, before, maxTokens);
  });

  await t.test('leaving the loop early cancels the request', async () => {
    const { maxTokens, before } = await longRequestStart(client, expected.prompt);
    for await (const response of client.generate(greedyRequest(expected.prompt, maxTokens), deadline())) {
      assert.equal(response.finish_reason, 'FINISH_REASON_UNSPECIFIED', 'it finished before the break');
      break;
    }
    await waitUntilFreedByAbort(client, before, maxTokens);
  });
});
