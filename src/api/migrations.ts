/** /v1/migrations: live-migrate a VM to a peer, follow it, cancel it. */
import { Hono } from "hono";
import { z } from "zod";
import { isTerminal } from "../migration/machine.ts";
import type { MigrationService } from "../migration/service.ts";
import { LIMITS } from "../transport/receiver.ts";
import { ApiError } from "./errors.ts";
import { followSSE } from "./sse.ts";
import { parseBody } from "./validate.ts";

const createMigration = z.object({
  vm: z.string().min(1, { message: "give the name of a VM running on this agent" }),
  peer: z.string().min(1, { message: "give a configured peer name or HOST:PORT" }),
  streams: z.number().int().min(1).max(LIMITS.maxStreams, {
    message: `streams must be 1..${LIMITS.maxStreams}`,
  })
    .optional(),
  downtimeLimitMs: z.number().int().min(1).max(60_000, { message: "downtimeLimitMs must be 1..60000" })
    .optional(),
  maxBytesPerSec: z.number().int().min(1024 * 1024, { message: "maxBytesPerSec must be at least 1 MiB/s" })
    .optional(),
  autoConverge: z.boolean().optional(),
  postcopy: z.literal(false, {
    message: "postcopy needs a return path from the destination that the agents do not carry yet; omit it",
  }).optional(),
}).strict();

export function migrationsRoutes(service: MigrationService): Hono {
  const app = new Hono();
  const find = (id: string) => {
    const m = service.get(id);
    if (!m) {
      throw new ApiError(404, "not_found", `no migration with id "${id}"; GET /v1/migrations lists them`);
    }
    return m;
  };

  app.post("/", async (c) => {
    const { postcopy: _postcopy, ...req } = await parseBody(c, createMigration);
    const snap = await service.start(req);
    return c.json(snap, 201, { Location: `/v1/migrations/${snap.id}` });
  });
  app.get("/", (c) => c.json({ migrations: service.list() }));
  app.get("/:id", (c) => c.json(find(c.req.param("id")).snapshot()));
  app.get(
    "/:id/events",
    (c) => followSSE(c, find(c.req.param("id")), (s) => ({ name: s.phase, final: isTerminal(s.phase) })),
  );
  app.delete("/:id", async (c) => {
    const m = find(c.req.param("id"));
    if (isTerminal(m.phase)) {
      throw new ApiError(409, "not_cancellable", `migration ${m.id} already ended (${m.phase})`);
    }
    if (m.snapshot().phase === "switchover") {
      throw new ApiError(
        409,
        "not_cancellable",
        `migration ${m.id} is switching over; it can no longer be cancelled`,
      );
    }
    await service.cancel(m.id);
    return c.json(m.snapshot());
  });
  return app;
}
