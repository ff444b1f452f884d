/** The PEER[:PATH] argument of `dwcp send --to`. */
import { UsageError } from "./common.ts";

/**
 * Splits PEER[:PATH]. PEER is a configured peer name or HOST:PORT: text starting with HOST:DIGITS
 * (followed by its end or ':') names the peer HOST:PORT and the rest after that ':' is the path;
 * otherwise the peer ends at the first ':'. An empty path means "no path" (the peer picks the name).
 */
export function parsePeerSpec(text: string): { peer: string; path?: string } {
  const hostPort = /^[^:]+:\d+(?=:|$)/.exec(text)?.[0];
  const colon = text.indexOf(":");
  const peer = hostPort ?? (colon < 0 ? text : text.slice(0, colon));
  const path = text.slice(peer.length + 1);
  if (!peer.trim()) {
    throw new UsageError(`--to "${text}" names no peer; use PEER[:PATH], for example b:/data/disk.img`);
  }
  return path ? { peer, path } : { peer };
}
