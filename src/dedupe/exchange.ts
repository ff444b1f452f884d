/**
 * The dedupe exchange with its IO (HDE): a byte stream in at the sender, the same bytes out of the sink at
 * the receiver, and over the channel only the chunks the receiver's store lacks. The state machines in
 * offer.ts decide everything; this file only moves their messages, reads and fills the store, and waits.
 *
 *   sender:   const stats = await sendDeduped(source, channel);
 *   receiver: const stats = await receiveDeduped(channel, store, (bytes) => sink.write(bytes));
 *
 * A transport carries the channel: the sender's OFFER, CHUNKS and END one way, the receiver's WANT back.
 */
import { type CdcSizes, StreamChunker, VM_MEMORY_CDC } from "./cdc.ts";
import type { ChunkStore } from "./chunk_store.ts";
import { type DedupeLimits, DEFAULT_DEDUPE_LIMITS } from "./messages.ts";
import { OfferReceiver, OfferSender, type ReceiverStats, type SenderStats } from "./offer.ts";

/** One ordered, message-framed direction pair. */
export interface MessageChannel {
  /** Queues msg; messages arrive in the order send() was called, whatever the order the promises settle. */
  send(msg: Uint8Array): Promise<void>;
  /** The next message, or undefined once the peer has closed its side. */
  receive(): Promise<Uint8Array | undefined>;
}

export interface DedupeOptions {
  sizes?: CdcSizes;
  limits?: DedupeLimits;
}

/** A one-shot wake-up: wait() resolves at the next notify(). */
class Notify {
  #waiters: (() => void)[] = [];
  wait(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
  notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }
}

/**
 * Chunks source and sends it through the exchange; resolves once END is sent. The source's buffers are kept
 * (not copied) until the receiver has answered for their chunks, so it must yield a fresh buffer per read.
 */
export async function sendDeduped(
  source: AsyncIterable<Uint8Array>,
  channel: MessageChannel,
  opts: DedupeOptions = {},
): Promise<SenderStats> {
  const chunker = new StreamChunker(opts.sizes ?? VM_MEMORY_CDC);
  const machine = new OfferSender(opts.limits ?? DEFAULT_DEDUPE_LIMITS);
  const changed = new Notify();
  let sourceDone = false;
  let failed: unknown;

  // Answers WANTs as they come, so CHUNKS go out while later offers are still being made. It only waits
  // for a message when an offer is unanswered, so it never waits on a receiver that owes nothing.
  const answering = (async () => {
    for (;;) {
      while (machine.inFlight === 0 && !sourceDone) await changed.wait();
      if (machine.inFlight === 0) return;
      const msg = await channel.receive();
      if (!msg) throw new Error(`dedupe receiver closed with ${machine.inFlight} offers unanswered`);
      // send() is called before the window opens, so an OFFER it lets through is queued after these CHUNKS.
      const sent = channel.send(machine.receive(msg));
      changed.notify();
      await sent;
    }
  })().catch((err) => {
    failed = err;
    changed.notify();
  });

  const offer = async (make: () => Uint8Array | undefined) => {
    while (machine.windowFull && failed === undefined) await changed.wait();
    if (failed !== undefined) throw failed;
    const msg = make();
    if (msg) {
      const sent = channel.send(msg);
      changed.notify();
      await sent;
    }
  };

  try {
    for await (const data of source) {
      for (const chunk of chunker.push(data)) await offer(() => machine.add(chunk));
    }
    const last = chunker.finish();
    if (last) await offer(() => machine.add(last));
    await offer(() => machine.flush());
  } finally {
    sourceDone = true;
    changed.notify();
    await answering;
  }
  if (failed !== undefined) throw failed;
  await channel.send(machine.end());
  return machine.stats();
}

/**
 * Receives a stream through the exchange into sink, in order, keeping what arrives in store; resolves at
 * END. Chunks the store holds are read (and verified) when their offer is answered; chunks that arrive
 * are checked against their hash before they reach the sink.
 */
export async function receiveDeduped(
  channel: MessageChannel,
  store: ChunkStore,
  sink: (bytes: Uint8Array) => Promise<void>,
  opts: Pick<DedupeOptions, "limits"> = {},
): Promise<ReceiverStats> {
  const machine = new OfferReceiver(opts.limits ?? DEFAULT_DEDUPE_LIMITS);
  for (;;) {
    const msg = await channel.receive();
    if (!msg) throw new Error("dedupe sender closed before END");
    const step = machine.receive(msg);
    switch (step.kind) {
      case "lookup": {
        const held = await Promise.all(step.lookups.map((e) => store.get(e.hash)));
        await channel.send(machine.answer(step.offerId, held));
        break;
      }
      case "deliver": {
        const kept = Promise.all(step.fresh.map((f) => store.put(f.bytes, f.hash)));
        for (const piece of step.pieces) await sink(piece);
        await kept;
        break;
      }
      case "end":
        await store.flush();
        return machine.stats();
    }
  }
}
