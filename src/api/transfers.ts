/** /v1/transfers: start, list, show, follow (server-sent events) and cancel file transfers. */
import { Hono } from "hono";
import { z } from "zod";
import { CODEC_SETTINGS } from "../encoding/codec_policy.ts";
import type { TransferService } from "../agent/transfers.ts";
import { LIMITS } from "../transport/receiver.ts";
import { ApiError } from "./errors.ts";
import { followSSE } from "./sse.ts";
import { parseBody } from "./validate.ts";

const createTransfer = z.object({
  source: z.string().min(1, { message: "give the path of the file to send" }),
  peer: z.string().min(1, { message: "give a configured peer name or HOST:PORT" }),
  destination: z.string().optional(),
  streams: z.number().int().min(1, { message: `streams must be 1..${LIMITS.maxStreams}` })
    .max(LIMITS.maxStreams, { message: `streams must be 1..${LIMITS.maxStreams}` }).optional(),
  codec: z.enum(CODEC_SETTINGS, { message: `codec must be one of ${CODEC_SETTINGS.join(", ")}` }).optional(),
  chunkBytes: z.number().int().min(LIMITS.minChunkBytes).max(LIMITS.maxChunkBytes).optional(),
  overwrite: z.boolean().optional(),
  maxBytesPerSec: z.number().int().min(1024, { message: "maxBytesPerSec must be at least 1024" }).optional(),
  base: z.string().min(1, { message: "give the path of the older version the peer holds, or leave base out" })
    .optional(),
}).strict();

export function transfersRoutes(service: TransferService): Hono {
  const app = new Hono();

  const find = (id: string) => {
    const p = service.get(id);
    if (!p) throw new ApiError(404, "not_found", `no transfer with id "${id}"; GET /v1/transfers lists them`);
    return p;
  };

  app.post("/", async (c) => {
    const body = await parseBody(c, createTransfer);
    const snap = await service.start(body);
    return c.json(snap, 201, { Location: `/v1/transfers/${snap.id}` });
  });

  app.get("/", (c) => c.json({ transfers: service.list() }));

  app.get("/:id", (c) => c.json(find(c.req.param("id")).snapshot()));

  app.get("/:id/events", (c) => {
    const progress = find(c.req.param("id"));
    return followSSE(
      c,
      progress,
      (s) => ({ name: s.state === "running" ? "progress" : s.state, final: progress.terminal }),
    );
  });

  app.delete("/:id", async (c) => {
    const id = c.req.param("id");
    const progress = find(id);
    if (!(await service.cancel(id))) {
      throw new ApiError(
        409,
        "not_cancellable",
        `transfer ${id} is ${progress.state}${progress.info.direction === "receive" ? " (incoming)" : ""}; ` +
          `only running outgoing transfers can be cancelled here`,
      );
    }
    return c.json(progress.snapshot());
  });

  return app;
}
