/** A small typed client of the agent's HTTP API; failures become ApiRequestError or AgentUnreachableError. */
import type { TransferRequest } from "../agent/transfers.ts";
import type { TransferSnapshot } from "../obs/progress.ts";
import type { OrtStatus, RdmaDevice } from "../../ffi/system.ts";
import type { MigrationRequest, MigrationSnapshot } from "../migration/service.ts";
import type { VmInfo } from "../vm/manager.ts";
import type { VmSpecInput } from "../vm/spec.ts";

export type { MigrationRequest, MigrationSnapshot, TransferRequest, TransferSnapshot, VmInfo, VmSpecInput };

/** What GET /v1/info answers (src/agent/agent.ts). */
export interface AgentInfo {
  version: string;
  agentId: string;
  protocolVersion: number;
  api: string;
  data: string;
  roots: string[];
  peers: Record<string, string>;
  defaults: { streams: number; chunkBytes: number; codec: string };
  libraries: Record<string, string>;
  codecs: string[];
  rdma: { available: boolean; devices: RdmaDevice[]; reason?: string };
  onnxRuntime: OrtStatus;
}

/** The agent answered with {"error":{code,message,details}} (or a non-JSON failure). */
export class ApiRequestError extends Error {
  override name = "ApiRequestError";
  constructor(readonly status: number, readonly code: string, message: string, readonly details?: unknown) {
    super(message);
  }
}

/** No HTTP answer at all: the agent is not running there, or the address is wrong. */
export class AgentUnreachableError extends Error {
  override name = "AgentUnreachableError";
  constructor(readonly url: string, reason: string) {
    super(`cannot reach the dwcp agent at ${url}: ${reason}; start it with \`dwcp agent\``);
  }
}

/** Longest server-sent event accepted; the stream is refused past it, so memory stays bounded. */
const MAX_EVENT_CHARS = 1 << 20;

/** Parses a text/event-stream body into its events (fields event and data; comments and ids ignored). */
export async function* readServerSentEvents(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<{ event: string; data: string }> {
  let buffer = "";
  let event = "message";
  let data: string[] = [];
  for await (const text of body.pipeThrough(new TextDecoderStream())) {
    buffer += text;
    for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
      const line = buffer.slice(0, nl).replace(/\r$/, "");
      buffer = buffer.slice(nl + 1);
      if (line === "") {
        if (data.length) yield { event, data: data.join("\n") };
        event = "message";
        data = [];
        continue;
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (buffer.length + data.reduce((n, d) => n + d.length, 0) > MAX_EVENT_CHARS) {
      throw new Error(`an event from the agent exceeds ${MAX_EVENT_CHARS} characters`);
    }
  }
}

/** The useful end of a fetch failure, e.g. "tcp connect error: Connection refused (os error 111)". */
function fetchFailure(err: unknown): string {
  const e = err as Error & { cause?: Error };
  const text = e.cause?.message ?? e.message ?? String(err);
  const at = text.lastIndexOf("): ");
  return at >= 0 ? text.slice(at + 3) : text;
}

async function errorFrom(res: Response): Promise<ApiRequestError> {
  const text = await res.text();
  try {
    const { error } = JSON.parse(text);
    if (typeof error?.code === "string") {
      const hint = res.status === 401 ? "; pass --token or set DWCP_TOKEN" : "";
      return new ApiRequestError(res.status, error.code, `${error.message}${hint}`, error.details);
    }
  } catch { /* not the agent's error shape */ }
  return new ApiRequestError(res.status, `http_${res.status}`, text.slice(0, 200) || res.statusText);
}

type Collection = "transfers" | "vms" | "migrations";

/** The API path of one item of a collection, e.g. /v1/transfers/ID. */
function itemPath(collection: Collection, id: string): string {
  return `/v1/${collection}/${encodeURIComponent(id)}`;
}

export class ApiClient {
  readonly baseUrl: string;

  constructor(baseUrl: string, readonly token?: string) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
  }

  async #request(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.token) headers.set("Authorization", `Bearer ${this.token}`);
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}${path}`, { ...init, headers });
    } catch (err) {
      if (init.signal?.aborted) throw err;
      throw new AgentUnreachableError(this.baseUrl, fetchFailure(err));
    }
    if (!res.ok) throw await errorFrom(res);
    return res;
  }

  async #json<T>(path: string, init?: RequestInit): Promise<T> {
    return await (await this.#request(path, init)).json() as T;
  }

  /** The items of a collection, which the agent answers as {COLLECTION: [...]}. */
  async #list<T>(collection: Collection): Promise<T[]> {
    return (await this.#json<Record<string, T[]>>(`/v1/${collection}`))[collection];
  }

  #post<T>(path: string, body: unknown): Promise<T> {
    return this.#json(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  #delete<T>(path: string): Promise<T> {
    return this.#json(path, { method: "DELETE" });
  }

  info(): Promise<AgentInfo> {
    return this.#json("/v1/info");
  }

  listTransfers(): Promise<TransferSnapshot[]> {
    return this.#list("transfers");
  }

  getTransfer(id: string): Promise<TransferSnapshot> {
    return this.#json(itemPath("transfers", id));
  }

  startTransfer(req: TransferRequest): Promise<TransferSnapshot> {
    return this.#post("/v1/transfers", req);
  }

  cancelTransfer(id: string): Promise<TransferSnapshot> {
    return this.#delete(itemPath("transfers", id));
  }

  /**
   * Snapshots from the transfer's event stream until the agent ends it (after a terminal state). A broken
   * stream just ends; an aborted signal throws.
   */
  follow(id: string, signal?: AbortSignal): AsyncGenerator<TransferSnapshot> {
    return this.#events(`${itemPath("transfers", id)}/events`, signal);
  }

  listVms(): Promise<VmInfo[]> {
    return this.#list("vms");
  }

  startVm(spec: VmSpecInput): Promise<VmInfo> {
    return this.#post("/v1/vms", spec);
  }

  stopVm(name: string): Promise<VmInfo> {
    return this.#delete(itemPath("vms", name));
  }

  listMigrations(): Promise<MigrationSnapshot[]> {
    return this.#list("migrations");
  }

  startMigration(req: MigrationRequest): Promise<MigrationSnapshot> {
    return this.#post("/v1/migrations", req);
  }

  getMigration(id: string): Promise<MigrationSnapshot> {
    return this.#json(itemPath("migrations", id));
  }

  cancelMigration(id: string): Promise<MigrationSnapshot> {
    return this.#delete(itemPath("migrations", id));
  }

  /** Snapshots from the migration's event stream (phase changes and progress ticks); see follow. */
  followMigration(id: string, signal?: AbortSignal): AsyncGenerator<MigrationSnapshot> {
    return this.#events(`${itemPath("migrations", id)}/events`, signal);
  }

  async *#events<T>(path: string, signal?: AbortSignal): AsyncGenerator<T> {
    const res = await this.#request(path, { signal, headers: { accept: "text/event-stream" } });
    try {
      for await (const { data } of readServerSentEvents(res.body!)) yield JSON.parse(data);
    } catch (err) {
      if (signal?.aborted) throw err;
    }
  }
}
