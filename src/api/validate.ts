/** Request body parsing with zod; a bad body is a 400 that names each bad field and its value. */
import type { Context } from "hono";
import type { z } from "zod";
import { ApiError } from "./errors.ts";

/** Bodies larger than this are refused (app.ts applies the limit while the body streams in). */
export const MAX_BODY_BYTES = 64 * 1024;

export async function parseBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.infer<S>> {
  const text = await c.req.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ApiError(400, "invalid_request", "request body is not valid JSON; send a JSON object");
  }
  const result = schema.safeParse(json);
  if (!result.success) {
    const issues = result.error.issues.map((i) => {
      const field = i.path.join(".") || "(body)";
      const value = i.path.reduce<unknown>(
        (o, k) => (o as Record<string, unknown> | undefined)?.[k as string],
        json,
      );
      return { field, value, message: i.message };
    });
    const summary = issues.map((i) => `${i.field} = ${JSON.stringify(i.value)}: ${i.message}`).join("; ");
    throw new ApiError(400, "invalid_request", summary, issues);
  }
  return result.data;
}
