/** Server-sent events for a long job: a snapshot now, one per change, a heartbeat, and an end. */
import type { Context } from "hono";
import { streamSSE } from "hono/streaming";

export interface Followable<S> {
  snapshot(): S;
  subscribe(listener: (s: S) => void): () => void;
}

export function followSSE<S>(
  c: Context,
  job: Followable<S>,
  eventOf: (s: S) => { name: string; final: boolean },
): Response {
  return streamSSE(c, async (stream) => {
    const done = Promise.withResolvers<void>();
    const send = (snap: S) => {
      const { name, final } = eventOf(snap);
      stream.writeSSE({ event: name, data: JSON.stringify(snap) }).catch(() => done.resolve());
      if (final) done.resolve();
    };
    const unsubscribe = job.subscribe(send);
    stream.onAbort(() => done.resolve());
    send(job.snapshot());
    // Notifications stop while a job stalls; a heartbeat keeps the figures fresh.
    const tick = setInterval(() => send(job.snapshot()), 1000);
    await done.promise;
    clearInterval(tick);
    unsubscribe();
  });
}
