/** The agent's HTTP API, built from its dependencies so tests can call it with app.request(). */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { timingSafeEqual } from "node:crypto";
import type { Roots } from "../agent/roots.ts";
import type { TransferService } from "../agent/transfers.ts";
import type { MigrationService } from "../migration/service.ts";
import type { PeerLinks } from "../mode/links.ts";
import type { VmManager } from "../vm/manager.ts";
import { ApiError, errorResponse } from "./errors.ts";
import { migrationsRoutes } from "./migrations.ts";
import { peersRoutes } from "./peers.ts";
import { transfersRoutes } from "./transfers.ts";
import { vmsRoutes } from "./vms.ts";
import { MAX_BODY_BYTES } from "./validate.ts";

export interface ApiDeps {
  transfers: TransferService;
  vms: VmManager;
  migrations: MigrationService;
  roots: Roots;
  /** Link probing and modes per peer (/v1/peers); absent, those routes are not served. */
  links?: PeerLinks;
  /** Bearer token required on every route but /v1/health; undefined turns the check off. */
  token?: string;
  info(): unknown;
}

function tokenMatches(header: string | undefined, token: string): boolean {
  const given = new TextEncoder().encode(header?.replace(/^Bearer /, "") ?? "");
  const want = new TextEncoder().encode(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

export function createApp(deps: ApiDeps): Hono {
  const app = new Hono();
  app.onError((err, c) => errorResponse(c, err));
  app.notFound((c) =>
    errorResponse(
      c,
      new ApiError(404, "not_found", `no route ${c.req.method} ${c.req.path}; see docs/api.md`),
    )
  );

  app.get("/v1/health", (c) => c.json({ status: "ok" }));
  // Counts bytes as the body streams in and stops reading at the limit, whatever Content-Length says.
  app.use(
    "/v1/*",
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: (c) =>
        errorResponse(
          c,
          new ApiError(413, "body_too_large", `request bodies are limited to ${MAX_BODY_BYTES} bytes`),
        ),
    }),
  );

  if (deps.token) {
    const token = deps.token;
    app.use("/v1/*", async (c, next) => {
      if (!tokenMatches(c.req.header("Authorization"), token)) {
        throw new ApiError(
          401,
          "unauthorized",
          "missing or wrong bearer token; send Authorization: Bearer <token>",
        );
      }
      await next();
    });
  }

  app.get("/v1/info", (c) => c.json(deps.info()));
  app.route("/v1/transfers", transfersRoutes(deps.transfers));
  app.route("/v1/vms", vmsRoutes(deps.vms, deps.roots));
  app.route("/v1/migrations", migrationsRoutes(deps.migrations));
  if (deps.links) app.route("/v1/peers", peersRoutes(deps.links));
  return app;
}
