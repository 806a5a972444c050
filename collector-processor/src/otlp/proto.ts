import { readFileSync } from 'node:fs';
import protobuf from 'protobufjs';

/** The OTLP trace messages we read and write, from `proto/otlp-trace.proto`. */
const root = protobuf.parse(readFileSync(new URL('../../proto/otlp-trace.proto', import.meta.url), 'utf8'), {
  keepCase: false,
}).root;

const type = (name: string) => root.lookupType(`tollgate.otlp.${name}`);

export const ProtoResource = type('Resource');
export const ProtoScope = type('InstrumentationScope');
export const ProtoSpan = type('Span');
export const ProtoRequest = type('ExportTraceServiceRequest');
export const ProtoResponse = type('ExportTraceServiceResponse');
export const ProtoRpcStatus = type('RpcStatus');
export const ProtoRetryInfo = type('RpcRetryInfo');
export const ProtoDirectives = type('TollgateDirectives');

export const { Reader } = protobuf;
/** How protobufjs hands over 64-bit integers (with the `long` package installed). */
export interface Long {
  low: number;
  high: number;
  unsigned: boolean;
}
