/** /v1/peers: each peer's link as measured, its mode and the settings that mode gives; pin a mode. */
import { Hono } from "hono";
import { z } from "zod";
import { type PeerLinks, UnknownLinkError } from "../mode/links.ts";
import { LINK_MODES } from "../mode/policy.ts";
import { ApiError } from "./errors.ts";
import { parseBody } from "./validate.ts";

const pinBody = z.object({
  mode: z.enum(LINK_MODES, { message: `mode must be one of ${LINK_MODES.join(", ")}` }),
}).strict();

function notFound(err: unknown): never {
  if (err instanceof UnknownLinkError) throw new ApiError(404, "not_found", err.message);
  throw err;
}

export function peersRoutes(links: Pick<PeerLinks, "list" | "view" | "pin" | "forecastView">): Hono {
  const app = new Hono();

  app.get("/", (c) => c.json({ peers: links.list() }));

  app.get("/:id", (c) => {
    const id = c.req.param("id");
    const view = links.view(id);
    if (!view) {
      throw new ApiError(
        404,
        "not_found",
        `no link to "${id}": it is neither a configured peer nor one this agent has sent to; GET /v1/peers lists them`,
      );
    }
    return c.json(view);
  });

  app.get("/:id/forecast", (c) => {
    const id = c.req.param("id");
    if (!links.view(id)) {
      throw new ApiError(404, "not_found", `no link to "${id}"; GET /v1/peers lists them`);
    }
    const view = links.forecastView(id);
    if (!view) {
      throw new ApiError(
        404,
        "no_history",
        `no bandwidth history for "${id}" yet: forecasts start once this agent has sent to it`,
      );
    }
    return c.json(view);
  });

  app.put("/:id/pin", async (c) => {
    const { mode } = await parseBody(c, pinBody);
    try {
      return c.json(links.pin(c.req.param("id"), mode));
    } catch (err) {
      notFound(err);
    }
  });

  app.delete("/:id/pin", (c) => {
    try {
      return c.json(links.pin(c.req.param("id"), undefined));
    } catch (err) {
      notFound(err);
    }
  });

  return app;
}
