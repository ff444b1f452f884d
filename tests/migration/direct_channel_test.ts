/** The direct channel's pure parts: when a migration may take it, and its socket buffers. */
import assert from "node:assert/strict";
import {
  channelBufferBytes,
  directChannelBlocker,
  MAX_CHANNEL_BUFFER_BYTES,
  MIN_CHANNEL_BUFFER_BYTES,
} from "../../src/migration/direct_channel.ts";

const plain = { dedupe: false, postcopy: false, multifdChannels: 0, tls: false };

Deno.test("directChannelBlocker: only a plain migration over plain TCP takes the direct channel", () => {
  assert.equal(directChannelBlocker(plain), undefined);
  assert.match(directChannelBlocker({ ...plain, tls: true })!, /TLS/);
  assert.match(directChannelBlocker({ ...plain, dedupe: true })!, /dedupe/);
  assert.match(directChannelBlocker({ ...plain, postcopy: true })!, /postcopy/);
  assert.match(directChannelBlocker({ ...plain, multifdChannels: 2 })!, /multifd/);
});

Deno.test("channelBufferBytes: twice the bandwidth-delay product, within its bounds", () => {
  // 10 Gbit/s over 1 ms: 1.25 MB in flight, 2.5 MB of buffer.
  assert.equal(channelBufferBytes({ linkBytesPerSec: 1.25e9, rttMs: 1 }), 2_500_000);
  // Loopback: microseconds of round trip; the floor, about what a unix socket queues.
  assert.equal(channelBufferBytes({ linkBytesPerSec: 1.25e9, rttMs: 0.01 }), MIN_CHANNEL_BUFFER_BYTES);
  assert.equal(channelBufferBytes(undefined), MIN_CHANNEL_BUFFER_BYTES);
  assert.equal(channelBufferBytes({ linkBytesPerSec: 1.25e9, rttMs: 100 }), MAX_CHANNEL_BUFFER_BYTES);
});
