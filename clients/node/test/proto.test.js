'use strict';
// Needs no server: the service loads from protos/v1 and encodes what the server reads.
const test = require('node:test');
const assert = require('node:assert/strict');
const { loadGenerationService } = require('../strata.js');

const Generation = loadGenerationService();

test('the service loads from protos/v1 with every RPC of generation.proto', () => {
  assert.deepEqual(Object.keys(Generation.service).sort(),
    ['Detokenize', 'Generate', 'GetMetrics', 'GetModelInfo', 'GetStats', 'Tokenize']);
  assert.equal(Generation.service.Generate.responseStream, true);
});

test('an explicit temperature 0 is sent: unset would mean 1.0, not greedy', () => {
  const { requestSerialize, requestDeserialize } = Generation.service.Generate;
  const greedy = requestDeserialize(requestSerialize({ sampling: { temperature: 0 } }));
  const unset = requestDeserialize(requestSerialize({ sampling: {} }));
  assert.equal(greedy.sampling.temperature, 0);
  assert.equal('temperature' in unset.sampling, false);
});
