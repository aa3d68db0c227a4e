'use strict';
// A Node.js client of strata.v1.Generation, the public API of a Strata server.
//
// The service is loaded at run time from the repository's protos/v1/*.proto with
// @grpc/proto-loader, so this client can never drift from the server's wire format and no
// generated JavaScript is kept next to it (the Python stubs are generated the same way, from the
// same files, by `python -m protos`).
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// generation.proto imports "protos/v1/common.proto": the include root is the repository root.
const REPO_ROOT = path.resolve(__dirname, '..', '..');
const GENERATION_PROTO = 'protos/v1/generation.proto';

const LOADER_OPTIONS = {
  includeDirs: [REPO_ROOT],
  keepCase: true,   // field names as in the proto (token_ids, max_tokens), as the Python client
  enums: String,    // finish_reason: 'FINISH_REASON_LENGTH', readable in logs and asserts
  longs: Number,    // the uint64 fields are counters and seeds: far below 2^53
  defaults: true,   // an unset response field reads as its proto3 default, not undefined
};

/** The strata.v1.Generation service constructor, loaded from protos/v1. */
function loadGenerationService() {
  const definition = protoLoader.loadSync(GENERATION_PROTO, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition).strata.v1.Generation;
}

/**
 * One Generate call: an async iterable of GenerateResponse messages, one per step that produced
 * tokens, the last with finish_reason and usage. A failed call throws from the loop an Error
 * whose `code` is a grpc.status (e.g. INVALID_ARGUMENT) and whose `details` is the server's
 * message, also when the loop starts after the call failed. After cancel() the loop ends
 * quietly; the server aborts the request and frees its blocks. Iterate it once.
 */
class GenerateStream {
  constructor(call) {
    this.call = call;
    this.isCancelled = false;
    this.error = null;
    // grpc-js reports a failed call as an 'error' event, which ends the process when nothing
    // listens: a call cancelled or failed before (or without) a loop over it. Keep it instead.
    call.on('error', (error) => {
      this.error = error;
    });
  }

  cancel() {
    this.isCancelled = true;
    this.call.cancel();
  }

  async *[Symbol.asyncIterator]() {
    try {
      yield* this.responses();
    } finally {
      // A consumer that leaves the loop early (break, throw) would otherwise leave the request
      // generating on the server until max_tokens; cancelling a finished call does nothing.
      this.call.cancel();
    }
  }

  async *responses() {
    try {
      for await (const response of this.call) {
        yield response;
      }
    } catch (error) {
      this.error = error;
    }
    // grpc-js ends the stream and then emits the error, in the same tick: it is known here.
    if (this.isFailed()) {
      throw this.error;
    }
  }

  isFailed() {
    const isOwnCancel = this.isCancelled && this.error?.code === grpc.status.CANCELLED;
    return this.error !== null && !isOwnCancel;
  }
}

/** A connection to one Strata server; every method maps to one RPC of strata.v1.Generation. */
class StrataClient {
  constructor(address, credentials) {
    const Generation = loadGenerationService();
    this.stub = new Generation(address, credentials);
  }

  /** Starts a Generate call; `options` are grpc-js call options (e.g. { deadline }). */
  generate(request, options = {}) {
    return new GenerateStream(this.stub.Generate(request, options));
  }

  async tokenize(text) {
    const response = await this.unary('Tokenize', { text });
    return response.ids;
  }

  getModelInfo() {
    return this.unary('GetModelInfo', {});
  }

  getStats() {
    return this.unary('GetStats', {});
  }

  close() {
    this.stub.close();
  }

  unary(method, request) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, (error, response) => (error ? reject(error) : resolve(response)));
    });
  }
}

/**
 * Connects to a Strata server at "host:port". Without credentials the channel is plaintext:
 * the server listens on 127.0.0.1 and takes no token (put a TLS proxy in front of it for other
 * hosts and pass grpc.credentials.createSsl(...) here).
 */
function connect(address, credentials = grpc.credentials.createInsecure()) {
  return new StrataClient(address, credentials);
}

module.exports = { connect, loadGenerationService, GenerateStream, StrataClient, status: grpc.status };
