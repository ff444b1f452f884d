/** /v1/migrations: live-migrate a VM to a peer, follow it, cancel it. */
import { Hono } from "hono";
import { z } from "zod";
import { MAX_MULTIFD_CHANNELS } from "../migration/incoming.ts";
import { isTerminal } from "../migration/machine.ts";
import { MIGRATION_CHANNELS, type MigrationService } from "../migration/service.ts";
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
  dedupe: z.boolean({ message: "dedupe must be true or false" }).optional(),
  postcopy: z.boolean({ message: "postcopy must be true or false" }).optional(),
  multifdChannels: z.number().int().min(0).max(MAX_MULTIFD_CHANNELS, {
    message: `multifdChannels must be 0..${MAX_MULTIFD_CHANNELS} (0: one migration channel)`,
  }).optional(),
  channel: z.enum(MIGRATION_CHANNELS, {
    message: 'channel must be "auto", "direct" (QEMU writes into the agents\' connection) or "streams" ' +
      "(the agents carry the stream)",
  }).optional(),
}).strict().refine((r) => !(r.postcopy && (r.multifdChannels ?? 0) > 0), {
  path: ["multifdChannels"],
  message: "QEMU 7.2 cannot combine postcopy with multifd: give multifdChannels 0 or drop postcopy",
}).refine((r) => !(r.dedupe && (r.multifdChannels ?? 0) > 0), {
  path: ["multifdChannels"],
  message:
    "multifd carries the pages outside the channel dedupe reads: give multifdChannels 0 or drop dedupe",
});

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
    const req = await parseBody(c, createMigration);
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
    const phase = m.snapshot().phase;
    if (phase === "switchover" || phase === "postcopy") {
      throw new ApiError(
        409,
        "not_cancellable",
        phase === "postcopy"
          ? `migration ${m.id} is in postcopy: the guest runs on the destination with pages still on the ` +
            `source, so it can no longer be cancelled`
          : `migration ${m.id} is switching over; it can no longer be cancelled`,
      );
    }
    await service.cancel(m.id);
    return c.json(m.snapshot());
  });
  return app;
}
