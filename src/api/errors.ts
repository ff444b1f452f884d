/** API errors as values: {"error":{"code","message","details"}} with the HTTP status that fits. */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { PathError } from "../agent/roots.ts";
import { UnknownPeerError } from "../agent/transfers.ts";
import { SourceError } from "../transport/chunk_source.ts";
import { TransferError } from "../transport/sender.ts";
import { PeerError } from "../transport/wire.ts";
import { MigrationError } from "../migration/service.ts";
import { VmError, type VmErrorCode } from "../vm/manager.ts";
import { VmSpecError } from "../vm/spec.ts";

export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }
}

/** Status for the codes a peer or the transport reports. */
const STATUS_BY_CODE: Record<string, ContentfulStatusCode> = {
  invalid_request: 400,
  unknown_peer: 400,
  path_outside_roots: 403,
  not_found: 404,
  not_a_file: 400,
  invalid_path: 400,
  exists: 409,
  busy: 503,
  auth_failed: 502,
  version_mismatch: 502,
  peer_unreachable: 502,
  vm_exists: 409,
  invalid_vm_spec: 400,
};

const VM_STATUS: Record<VmErrorCode, ContentfulStatusCode> = {
  vm_exists: 409,
  vm_not_found: 404,
  vm_not_running: 409,
  vm_start_failed: 422,
};

export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof UnknownPeerError) return new ApiError(400, "unknown_peer", err.message);
  if (err instanceof VmSpecError) return new ApiError(400, err.code, err.message, err.issues);
  if (err instanceof VmError) return new ApiError(VM_STATUS[err.code], err.code, err.message, err.details);
  if (err instanceof MigrationError) return new ApiError(err.status, err.code, err.message);
  if (err instanceof SourceError) return new ApiError(400, "source_unreadable", err.message);
  if (err instanceof PathError) return new ApiError(STATUS_BY_CODE[err.code] ?? 400, err.code, err.message);
  if (err instanceof PeerError || err instanceof TransferError) {
    // A peer's refusal keeps its code; anything the peer did not classify is a gateway failure.
    return new ApiError(STATUS_BY_CODE[err.code] ?? 502, err.code, err.message);
  }
  return new ApiError(500, "internal", (err as Error)?.message ?? String(err));
}

export function errorResponse(c: Context, err: unknown): Response {
  const e = toApiError(err);
  return c.json({ error: { code: e.code, message: e.message, details: e.details } }, e.status);
}
