// wacall's Node client: the protos are loaded from proto/ at run time (no generated code), every call carries the
// bearer token, unary RPCs are async functions returning plain objects, streams are async iterators, and
// errorDetails() decodes the google.rpc details the service puts in the grpc-status-details-bin trailer.
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

/** The repository's proto/ directory (pass `protoDir` when the client is installed elsewhere). */
export const DEFAULT_PROTO_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../proto");

const SERVICE_FILES = [
  "wacall/v1/calling.proto",
  "wacall/v1/contact_center.proto",
  "wacall/sim/v1/simulator.proto",
  "wacall/testing/v1/clock.proto",
];
const ERROR_FILES = ["google/rpc/status.proto", "google/rpc/error_details.proto"];

// Plain objects: lowerCamel field names, enums as their names, int64 as strings, unset fields as their defaults,
// and the name of the field set in each oneof.
const LOADER_OPTIONS = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true };
const DECODE_OPTIONS = { longs: String, enums: String, defaults: true };

export { grpc };
export const status = grpc.status;

/**
 * @typedef {object} ClientOptions
 * @property {string} [token] sent as `authorization: Bearer <token>` on every call (the service's --auth-token)
 * @property {boolean} [tls] TLS with the system's roots
 * @property {Buffer} [rootCerts] PEM roots to trust (implies TLS)
 * @property {Buffer} [privateKey] PEM client key, for mutual TLS
 * @property {Buffer} [certChain] PEM client certificate chain, for mutual TLS
 * @property {grpc.ChannelCredentials} [credentials] ready channel credentials (overrides the TLS options)
 * @property {number} [deadlineMs] a deadline for each unary call, in milliseconds
 * @property {string} [protoDir] where wacall's proto/ directory is (default: this repository's)
 */

/**
 * @typedef {object} ErrorDetails
 * @property {number} code the gRPC status code
 * @property {string} message
 * @property {{seconds: number, nanos: number} | null} retryDelay RetryInfo: how long to wait before retrying helps
 * @property {number | null} retryAfterMs the same in milliseconds (null: waiting would not help)
 * @property {Array<{subject: string, description: string}>} quotaViolations QuotaFailure
 * @property {Array<{type: string, subject: string, description: string}>} preconditionViolations PreconditionFailure
 * @property {Array<{field: string, description: string}>} fieldViolations BadRequest
 * @property {{reason: string, domain: string, metadata: Record<string, string>} | null} errorInfo ErrorInfo
 * @property {Array<object>} resourceInfo ResourceInfo
 */

const errorTypes = new Map();

function errorType(protoDir, name) {
  let root = errorTypes.get(protoDir);
  if (root === undefined) {
    root = new protobuf.Root();
    root.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(protoDir, target));
    root.loadSync(ERROR_FILES, { keepCase: false });
    errorTypes.set(protoDir, root);
  }
  return root.lookupType(name);
}

/**
 * Decodes the google.rpc details of a failed call (the `grpc-status-details-bin` trailer): RetryInfo,
 * QuotaFailure, PreconditionFailure, BadRequest, ErrorInfo, ResourceInfo. Details of other types are skipped.
 * @param {grpc.ServiceError} err a rejected call's error
 * @param {{protoDir?: string}} [options]
 * @returns {ErrorDetails}
 */
export function errorDetails(err, { protoDir = DEFAULT_PROTO_DIR } = {}) {
  /** @type {ErrorDetails} */
  const details = {
    code: err.code,
    message: err.details ?? err.message,
    retryDelay: null,
    retryAfterMs: null,
    quotaViolations: [],
    preconditionViolations: [],
    fieldViolations: [],
    errorInfo: null,
    resourceInfo: [],
  };
  const [raw] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (raw === undefined) return details;
  const rpcStatus = errorType(protoDir, "google.rpc.Status").decode(Buffer.from(raw));
  for (const any of rpcStatus.details) {
    // protobufjs's bundled google.protobuf.Any keeps the proto's snake_case names.
    const typeUrl = any.type_url ?? any.typeUrl;
    const name = typeUrl.slice(typeUrl.lastIndexOf("/") + 1);
    let type;
    try {
      type = errorType(protoDir, name);
    } catch {
      continue; // a detail type this client does not know
    }
    const detail = type.toObject(type.decode(any.value), DECODE_OPTIONS);
    switch (name) {
      case "google.rpc.RetryInfo": {
        const seconds = Number(detail.retryDelay?.seconds ?? 0);
        const nanos = detail.retryDelay?.nanos ?? 0;
        details.retryDelay = { seconds, nanos };
        details.retryAfterMs = seconds * 1000 + Math.round(nanos / 1e6);
        break;
      }
      case "google.rpc.QuotaFailure":
        details.quotaViolations.push(...detail.violations);
        break;
      case "google.rpc.PreconditionFailure":
        details.preconditionViolations.push(...detail.violations);
        break;
      case "google.rpc.BadRequest":
        details.fieldViolations.push(...detail.fieldViolations);
        break;
      case "google.rpc.ErrorInfo":
        details.errorInfo = { reason: detail.reason, domain: detail.domain, metadata: detail.metadata ?? {} };
        break;
      case "google.rpc.ResourceInfo":
        details.resourceInfo.push(detail);
        break;
      default:
        break;
    }
  }
  return details;
}

function channelCredentials({ tls, rootCerts, privateKey, certChain, credentials }) {
  if (credentials) return credentials;
  if (tls || rootCerts || privateKey || certChain) {
    return grpc.credentials.createSsl(rootCerts ?? null, privateKey ?? null, certChain ?? null);
  }
  return grpc.credentials.createInsecure();
}

/** A Duration message from seconds. */
export function duration(seconds) {
  const whole = Math.floor(seconds);
  return { seconds: String(whole), nanos: Math.round((seconds - whole) * 1e9) };
}

/**
 * wacall's API. Unary methods return promises of plain objects (lowerCamel fields, enum names) and reject with the
 * grpc-js ServiceError (`code`, `details`, `metadata`: pass it to `errorDetails`). `calling`, `contactCenter`,
 * `simulator` and `clock` are the raw grpc-js clients, for anything not wrapped here (`unary` calls any of them).
 */
export class Client {
  /**
   * @param {string} address HOST:PORT of wacall's gRPC server
   * @param {ClientOptions} [options]
   */
  constructor(address, options = {}) {
    const protoDir = options.protoDir ?? DEFAULT_PROTO_DIR;
    const definition = protoLoader.loadSync(SERVICE_FILES, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
    const loaded = /** @type {any} */ (grpc.loadPackageDefinition(definition));
    const credentials = channelCredentials(options);
    this.calling = new loaded.wacall.v1.CallingService(address, credentials);
    const channelOverride = this.calling.getChannel();
    const shared = { channelOverride };
    this.contactCenter = new loaded.wacall.v1.ContactCenterService(address, credentials, shared);
    this.simulator = new loaded.wacall.sim.v1.SimulatorService(address, credentials, shared);
    this.clock = new loaded.wacall.testing.v1.ClockService(address, credentials, shared);
    this.metadata = new grpc.Metadata();
    if (options.token) this.metadata.set("authorization", `Bearer ${options.token}`);
    this.deadlineMs = options.deadlineMs;
    this.protoDir = protoDir;
  }

  /**
   * Calls a unary RPC of one of the services with the token and the deadline.
   * @param {any} service e.g. `client.calling`
   * @param {string} method e.g. "GetPermission"
   * @param {object} request a plain object
   * @returns {Promise<any>}
   */
  unary(service, method, request) {
    const callOptions = this.deadlineMs ? { deadline: Date.now() + this.deadlineMs } : {};
    return new Promise((resolve, reject) => {
      service[method](request, this.metadata, callOptions, (err, reply) => (err ? reject(err) : resolve(reply)));
    });
  }

  /** The pair's permission, with what each action may do now and when it next can. */
  getPermission(businessNumber, userNumber, { reconcile = false } = {}) {
    return this.unary(this.calling, "GetPermission", { businessNumber, userNumber, reconcile });
  }

  /**
   * Sends a call-permission request. Rejects with RESOURCE_EXHAUSTED (RetryInfo, QuotaFailure) when a limit is
   * used up, FAILED_PRECONDITION (PreconditionFailure) when the rules refuse it, INVALID_ARGUMENT (BadRequest).
   */
  requestPermission(businessNumber, userNumber, { bodyText = "", template = null, idempotencyKey = "" } = {}) {
    return this.unary(this.calling, "RequestPermission", {
      businessNumber,
      userNumber,
      bodyText,
      template,
      idempotencyKey,
    });
  }

  /** One pair's audit trail, a page at a time (`nextCursor` is the next page's `afterCursor`). */
  listEvents(businessNumber, userNumber, { pageSize = 0, afterCursor = "" } = {}) {
    return this.unary(this.calling, "ListEvents", { businessNumber, userNumber, pageSize, afterCursor });
  }

  /** The policy in force. */
  getPolicy() {
    return this.unary(this.calling, "GetPolicy", {});
  }

  /** Places a business-initiated call; resolves with the call DIALING. */
  startCall(businessNumber, userNumber, { route = null, bizOpaqueCallbackData = "", idempotencyKey = "" } = {}) {
    return this.unary(this.calling, "StartCall", {
      businessNumber,
      userNumber,
      route,
      bizOpaqueCallbackData,
      idempotencyKey,
    });
  }

  /** The call now. */
  getCall(callId) {
    return this.unary(this.calling, "GetCall", { callId });
  }

  /** Ends the call (CANCELLED before the user answered). */
  endCall(callId) {
    return this.unary(this.calling, "EndCall", { callId });
  }

  /** Calls, newest first. */
  listCalls({ businessNumber = "", userNumber = "", pageSize = 0, pageToken = "" } = {}) {
    return this.unary(this.calling, "ListCalls", { businessNumber, userNumber, pageSize, pageToken });
  }

  /**
   * Every ledger change in order, then new ones as they happen. Leaving the `for await` loop cancels the stream;
   * a failure is thrown as the ServiceError.
   * @returns {AsyncGenerator<any>}
   */
  async *watchEvents({ businessNumber = "", userNumber = "", afterCursor = "", onlyNew = false } = {}) {
    const call = this.calling.WatchEvents({ businessNumber, userNumber, afterCursor, onlyNew }, this.metadata);
    try {
      for await (const event of call) yield event;
    } finally {
      call.on("error", () => {}); // the CANCELLED that cancelling causes is expected
      call.cancel();
    }
  }

  /** The simulated user's behaviour from now on: the fields given change (see SetUserBehaviorRequest). */
  setUserBehavior(userNumber, behavior = {}) {
    return this.unary(this.simulator, "SetUserBehavior", { userNumber, ...behavior });
  }

  /** The simulated user grants permission from the business profile. */
  grantPermission(businessNumber, userNumber, { permanent = false } = {}) {
    return this.unary(this.simulator, "GrantPermission", { businessNumber, userNumber, permanent });
  }

  /** The manual clock's time. */
  now() {
    return this.unary(this.clock, "Now", {});
  }

  /** Moves the manual clock forward by `seconds`. */
  advance(seconds) {
    return this.unary(this.clock, "Advance", { duration: duration(seconds) });
  }

  /**
   * `errorDetails(err)` with this client's proto directory.
   * @param {grpc.ServiceError} err
   * @returns {ErrorDetails}
   */
  errorDetails(err) {
    return errorDetails(err, { protoDir: this.protoDir });
  }

  /** Closes the channel. */
  close() {
    this.calling.close();
  }
}
