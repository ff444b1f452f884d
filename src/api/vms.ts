/** /v1/vms: start, list, show and stop QEMU guests on this host. */
import { Hono } from "hono";
import type { Roots } from "../agent/roots.ts";
import type { VmManager } from "../vm/manager.ts";
import { confineVmSpec } from "../vm/confine.ts";
import { vmSpecSchema } from "../vm/spec.ts";
import { parseBody } from "./validate.ts";

export function vmsRoutes(vms: VmManager, roots: Roots): Hono {
  const app = new Hono();
  app.post("/", async (c) => {
    const spec = await parseBody(c, vmSpecSchema);
    const vm = await vms.start(await confineVmSpec(roots, spec));
    return c.json(vm, 201, { Location: `/v1/vms/${vm.name}` });
  });
  app.get("/", (c) => c.json({ vms: vms.list() }));
  app.get("/:name", async (c) => c.json(await vms.refresh(c.req.param("name"))));
  app.delete("/:name", async (c) => c.json(await vms.stop(c.req.param("name"))));
  return app;
}
