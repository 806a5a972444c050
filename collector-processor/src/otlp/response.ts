import type { Directive, LeaseGrant } from '@tollgate/contracts';
import { DIRECTIVES_JSON_KEY } from '@tollgate/contracts';
import { ProtoResponse, ProtoRetryInfo, ProtoRpcStatus } from './proto.js';

export type WireFormat = 'protobuf' | 'json';

export const CONTENT_TYPE: Record<WireFormat, string> = {
  protobuf: 'application/x-protobuf',
  json: 'application/json',
};

export interface ExportOutcome {
  rejectedSpans: number;
  errorMessage: string;
  directives: Directive[];
  /** Quota leases renewed with this export (Tollgate SDK senders that hold leases). */
  leases?: LeaseGrant[];
}

/**
 * `ExportTraceServiceResponse`. `partial_success` is set only when something was rejected (stock
 * exporters log any non-empty partial success as a warning); directives ride in a field stock clients skip.
 */
export function encodeExportResponse(format: WireFormat, outcome: ExportOutcome): Buffer | string {
  const partial =
    outcome.rejectedSpans > 0 || outcome.errorMessage
      ? { rejectedSpans: outcome.rejectedSpans, errorMessage: outcome.errorMessage }
      : undefined;
  if (format === 'json') {
    const body: Record<string, unknown> = {};
    if (partial) body.partialSuccess = { ...partial, rejectedSpans: String(partial.rejectedSpans) };
    const leases = outcome.leases ?? [];
    if (outcome.directives.length || leases.length) {
      body[DIRECTIVES_JSON_KEY] = {
        directives: outcome.directives,
        ...(leases.length ? { leases } : {}),
      };
    }
    return JSON.stringify(body);
  }
  const msg: Record<string, unknown> = {};
  if (partial) msg.partialSuccess = partial;
  const leases = (outcome.leases ?? []).map((l) => JSON.stringify(l));
  if (outcome.directives.length || leases.length) msg.tollgate = { directives: outcome.directives, leases };
  return Buffer.from(ProtoResponse.encode(ProtoResponse.fromObject(msg)).finish());
}

/** The `google.rpc.Status` body OTLP/HTTP uses for error responses. */
export function encodeRpcStatus(format: WireFormat, grpcCode: number, message: string): Buffer | string {
  if (format === 'json') return JSON.stringify({ code: grpcCode, message });
  return Buffer.from(ProtoRpcStatus.encode({ code: grpcCode, message }).finish());
}

const RETRY_INFO_TYPE = 'type.googleapis.com/google.rpc.RetryInfo';

/**
 * The `google.rpc.Status` of an OTLP/gRPC refusal (its `grpc-status-details-bin` trailer), with a
 * `google.rpc.RetryInfo` when the refusal says when to retry: OTLP/gRPC senders retry RESOURCE_EXHAUSTED only
 * with one, and wait its delay before retrying UNAVAILABLE (opentelemetry-proto, specification.md, "Failures").
 */
export function encodeGrpcStatusDetails(
  grpcCode: number,
  message: string,
  retryAfterSeconds?: number,
): Buffer {
  const details =
    retryAfterSeconds === undefined
      ? []
      : [
          {
            typeUrl: RETRY_INFO_TYPE,
            value: ProtoRetryInfo.encode({ retryDelay: { seconds: retryAfterSeconds, nanos: 0 } }).finish(),
          },
        ];
  return Buffer.from(ProtoRpcStatus.encode({ code: grpcCode, message, details }).finish());
}

/** The delay of a `grpc-status-details-bin` trailer's RetryInfo, in seconds (tests), or undefined. */
export function retryDelayOf(details: Uint8Array): number | undefined {
  const status = ProtoRpcStatus.toObject(ProtoRpcStatus.decode(details), { longs: Number }) as {
    details?: { typeUrl: string; value: Uint8Array }[];
  };
  const info = status.details?.find((d) => d.typeUrl === RETRY_INFO_TYPE);
  if (!info) return undefined;
  const retry = ProtoRetryInfo.toObject(ProtoRetryInfo.decode(info.value), { longs: Number }) as {
    retryDelay?: { seconds?: number };
  };
  return retry.retryDelay?.seconds ?? 0;
}

/** Decodes a response (used by tests and by the Tollgate SDK's exporter side). */
export function decodeExportResponse(bytes: Uint8Array): {
  partialSuccess?: { rejectedSpans: number; errorMessage: string };
  directives: Directive[];
} {
  const m = ProtoResponse.toObject(ProtoResponse.decode(bytes), { longs: Number, defaults: false }) as {
    partialSuccess?: { rejectedSpans?: number; errorMessage?: string };
    tollgate?: { directives?: Directive[] };
  };
  const out: ReturnType<typeof decodeExportResponse> = { directives: m.tollgate?.directives ?? [] };
  if (m.partialSuccess) {
    out.partialSuccess = {
      rejectedSpans: m.partialSuccess.rejectedSpans ?? 0,
      errorMessage: m.partialSuccess.errorMessage ?? '',
    };
  }
  return out;
}
