/* Content-defined chunking for dedupe (HDE): FastCDC (Xia et al., USENIX ATC 2016) with a gear rolling hash
 * and normalized chunking. Cut points depend only on the bytes since the previous cut, so equal data gets
 * equal chunks wherever it sits in a stream and whichever host cuts it. Sizes, batching and hashing of the
 * chunks are decided in TypeScript (src/dedupe/cdc.ts); this file only finds the cuts.
 *
 * The rule, which every host must apply identically (changing it changes every chunk hash, so a store
 * filled by another build would stop matching):
 *   - gear[b] is the (b+1)-th output of splitmix64 seeded with CDC_SEED;
 *   - at a chunk start the hash is 0 and the chunk length n is 0; bytes are consumed one at a time;
 *   - the bytes at chunk indexes below min-1 are not hashed (a cut cannot fall there, and the 64-bit
 *     hash forgets a byte after 64 shifts anyway); each later byte does h = (h << 1) + gear[byte];
 *   - after the byte that makes the length n: cut when (h & mask) == 0, with mask = mask_s (log2(avg)+2
 *     top bits) while n <= avg and mask_l (log2(avg)-2 top bits) after, or when n == max.
 * Top bits, because bit k of a shift-left gear hash depends on the last k+1 bytes only: the top bits see
 * a 64-byte window. The stricter mask below avg and the looser one above pull sizes towards avg. */
#include "dwcp.h"

#define CDC_SEED 0x6477637063646331ULL /* "dwcpcdc1" */
#define CDC_MIN_LIMIT 64u
#define CDC_MAX_LIMIT (16u << 20)

static uint64_t gear[256];

/* Runs at dlopen, before any caller can reach dwcp_cdc_cuts; the table is read-only afterwards. */
__attribute__((constructor)) static void init_gear(void) {
  uint64_t x = CDC_SEED;
  for (int i = 0; i < 256; i++) {
    x += 0x9e3779b97f4a7c15ULL;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    gear[i] = z ^ (z >> 31);
  }
}

static inline uint64_t top_bits(unsigned n) { return n == 0 ? 0 : ~0ULL << (64 - n); }

static inline uint64_t load_u64le(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static inline void store_u64le(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Hashes p[from..to) and returns the index just past the first byte whose hash has no mask bit set, or 0
 * when none has (a cut is never at index 0, so 0 is free as "no cut"). */
static inline size_t scan(const uint8_t *p, size_t from, size_t to, uint64_t *hash, uint64_t mask) {
  uint64_t h = *hash;
  for (size_t i = from; i < to; i++) {
    h = (h << 1) + gear[p[i]];
    if ((h & mask) == 0) {
      *hash = h;
      return i + 1;
    }
  }
  *hash = h;
  return 0;
}

int32_t dwcp_cdc_cuts(const uint8_t *src, uint32_t len, uint32_t min_size, uint32_t avg_size, uint32_t max_size,
                      uint8_t *state, uint32_t *cuts, uint32_t cuts_cap) {
  if (min_size < CDC_MIN_LIMIT || !(min_size < avg_size && avg_size < max_size) || max_size > CDC_MAX_LIMIT ||
      (avg_size & (avg_size - 1)) != 0)
    return dwcp_fail(DWCP_EINVAL,
                     "chunk sizes min %u avg %u max %u: need %u <= min < avg < max <= %u with avg a power of two",
                     min_size, avg_size, max_size, CDC_MIN_LIMIT, CDC_MAX_LIMIT);
  /* Each cut but the first ends a chunk of at least min bytes that lies wholly in src. */
  uint32_t need = len / min_size + 1;
  if (cuts_cap < need)
    return dwcp_fail(DWCP_ENOSPC, "cut buffer holds %u entries, %u bytes may need %u", cuts_cap, len, need);
  uint64_t h = load_u64le(state);
  uint64_t n = load_u64le(state + 8);
  if (n >= max_size)
    return dwcp_fail(DWCP_EINVAL, "state says the open chunk has %llu bytes, max is %u: not this chunker's state",
                     (unsigned long long)n, max_size);
  unsigned bits = (unsigned)__builtin_ctz(avg_size);
  uint64_t mask_s = top_bits(bits + 2), mask_l = top_bits(bits - 2);

  int32_t count = 0;
  size_t i = 0;
  while (i < len) {
    size_t avail = len - i;
    if (n + 1 < min_size) {
      size_t skip = min_size - 1 - n < avail ? min_size - 1 - n : avail;
      i += skip;
      n += skip;
      continue;
    }
    size_t cut;
    if (n < avg_size) {
      size_t k = avg_size - n < avail ? avg_size - n : avail;
      cut = scan(src, i, i + k, &h, mask_s);
      if (!cut) {
        i += k;
        n += k;
        continue;
      }
    } else {
      size_t k = max_size - n < avail ? max_size - n : avail;
      cut = scan(src, i, i + k, &h, mask_l);
      if (!cut) {
        i += k;
        n += k;
        if (n < max_size) continue;
        cut = i;
      }
    }
    cuts[count++] = (uint32_t)cut;
    i = cut;
    n = 0;
    h = 0;
  }
  store_u64le(state, h);
  store_u64le(state + 8, n);
  return count;
}
