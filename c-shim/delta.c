/* Page deltas for the HDE encoder: a chunk is encoded against the same bytes of an older version (its
 * base) page by page. Each page becomes one of four kinds, written as 2 bits of a kind map (page i at
 * kinds[i / 4] >> (2 * (i % 4)) & 3, bits past the last page clear):
 *
 *   0 unchanged  equal to the base page; nothing else travels
 *   1 zero       all zero, whatever the base holds; nothing else travels
 *   2 delta      the XOR of page and base page with its zero runs left out: its runs' places in the
 *                control stream, their bytes in the literal stream
 *   3 whole      the page itself, in the whole section
 *
 * A delta page is a set of runs, maximal stretches of bytes that differ from the base. For each delta
 * page, in page order, the control stream holds
 *
 *   varint runs                         how many runs (1 or more)
 *   per run: u8 min(words, 7) << 5      words = start / 8 - end / 8: the 8-byte words from the one holding
 *               | lane << 2 | c         the previous run's end (the page start for the first run) to the
 *                                       one holding this run's start; lane = start % 8, the run's first
 *                                       byte within its word; c = min(length, 4) - 1
 *            [varint words - 7]         only when words >= 7
 *            [varint length - 4]        only when c = 3
 *
 * and the literal stream holds each run's bytes in the same order, XOR-ed with the base or as they are
 * now (the literal form, the caller's choice per chunk). Varints are LEB128 of at most 3 bytes (values below
 * 2^21; a page has at most 65536 bytes).
 *
 * Why this form: programs change memory in small runs (a counter's low byte, a pointer's low bytes, a
 * field, a small struct), and mostly in aligned 8-byte words: on real guest pages with about 1 % changed
 * most runs start at a word's first or second byte. Writing where a run starts as word distance and lane
 * keeps that regularity in bits of their own, where a byte distance from the previous run's end mixed it
 * into the distance's low bits once run lengths vary: after zstd the control stream of those real pages
 * shrank by 4 to 7 % (three 10 s intervals of the test guest, about 50 such pages each; the whole payload
 * by 1.4 to 2.5 %). A near run takes one byte as before, so dense changes cost no more: with the word
 * distance in a byte of its own they measured up to 13 % larger. Places and bytes go in two streams
 * because they have different statistics: the codec after this stage (zstd) then squeezes the XOR bytes
 * of counters incremented or flags set (0x01, 0x03, 0x07: a few distinct values) and the repeated
 * distances of an array of counters separately, 7 to 15 % smaller than one interleaved stream across
 * every change model tried. XOR for the same reason: a counter incremented or a flag set leaves a literal of
 * few distinct values, where its new bytes would look random; but pointers written over other pointers or
 * over zeros repeat their high bytes in the new form and not in the XOR, and on real guest pages the new
 * bytes compress smaller, so the encoder writes both and the caller keeps the smaller. Runs are never
 * merged across an equal byte: with separate streams, that measured larger.
 *
 * A page travels as a delta when its control and literal bytes together are fewer than delta_share / 256
 * of the page (the caller's choice; 256: whenever smaller), else whole. Pages the base does not wholly
 * cover (past its end) travel whole or as zero. Decoding checks every count and length against the page,
 * the base and the input, and never reads or writes outside them: a bad stream is an error, never a
 * crash. Which chunks get a delta, how large a share pays, and the codec after it are decided in
 * TypeScript.
 * Little-endian hosts only (the first differing byte of a word is found with ctz). */
#include "dwcp.h"
#include "page_util.h"

#include <string.h>
#include <xxhash.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "delta.c finds the first differing byte of a word with ctz, which assumes a little-endian host"
#endif

enum { KIND_UNCHANGED = 0, KIND_ZERO = 1, KIND_DELTA = 2, KIND_WHOLE = 3 };

/* A varint holds at most 21 bits in 3 bytes: enough for any word distance or length within a 64 KiB page. */
#define MAX_VARINT_BYTES 3

static inline uint32_t kinds_bytes(uint32_t pages) { return pages / 4 + (pages % 4 != 0); }

static int all_zero(const uint8_t *p, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    if ((load64(p + i) | load64(p + i + 8) | load64(p + i + 16) | load64(p + i + 24)) != 0) return 0;
  for (; i < n; i++)
    if (p[i] != 0) return 0;
  return 1;
}

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Index of the first i in [from, n) where a[i] != b[i], or n. */
static size_t next_diff(const uint8_t *a, const uint8_t *b, size_t from, size_t n) {
  size_t i = from;
  for (; i + 8 <= n; i += 8) {
    uint64_t x = load64(a + i) ^ load64(b + i);
    if (x != 0) return i + (size_t)__builtin_ctzll(x) / 8;
  }
  for (; i < n; i++)
    if (a[i] != b[i]) return i;
  return n;
}

/* Index of the first i in [from, n) where a[i] == b[i], or n. */
static size_t next_same(const uint8_t *a, const uint8_t *b, size_t from, size_t n) {
  size_t i = from;
  for (; i + 8 <= n; i += 8) {
    uint64_t x = load64(a + i) ^ load64(b + i);
    uint64_t zero_bytes = (x - ONES) & ~x & HIGHS; /* the lowest set flag marks the first zero byte */
    if (zero_bytes != 0) return i + (size_t)__builtin_ctzll(zero_bytes) / 8;
  }
  for (; i < n; i++)
    if (a[i] == b[i]) return i;
  return n;
}

static inline size_t put_varint(uint8_t *out, uint32_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    out[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

static inline size_t varint_bytes(uint32_t v) { return v < 128 ? 1 : v < 16384 ? 2 : 3; }

static inline uint32_t run_class(size_t len) { return (uint32_t)(len < 4 ? len - 1 : 3); }

/* 8-byte words from the one holding prev_end to the one holding start. */
static inline uint32_t run_words(size_t prev_end, size_t start) { return (uint32_t)(start / 8 - prev_end / 8); }

/* Word distances below this go in the token; this one says a varint of the rest follows. */
#define TOKEN_WORDS 7

/* Control bytes of one run: its token, the word distance past the token's, and the length past 3 if any. */
static inline size_t run_ctrl_bytes(size_t prev_end, size_t start, size_t len) {
  uint32_t words = run_words(prev_end, start);
  return 1 + (words >= TOKEN_WORDS ? varint_bytes(words - TOKEN_WORDS) : 0) +
         (len >= 4 ? varint_bytes((uint32_t)(len - 4)) : 0);
}

/* Writes the runs of page against base (n bytes each, at least one byte differing) into ctrl and lits, and
 * the runs' new bytes into news unless it is NULL, each with room for n bytes, and sets *ctrl_len and
 * *lit_len; returns -1, writing nothing, when the control and literal bytes together would take limit bytes
 * or more (the page then travels whole). limit is at most n. */
static int encode_page(const uint8_t *page, const uint8_t *base, size_t n, size_t limit, uint8_t *ctrl,
                       uint8_t *lits, uint8_t *news, size_t *ctrl_len, size_t *lit_len) {
  /* First pass: count the runs and their bytes, so that the control bytes can start with the count and a
   * page that would not gain is known before anything is written. */
  size_t runs = 0, cn = 0, ln = 0, end = 0;
  for (size_t start = next_diff(page, base, 0, n); start < n; start = next_diff(page, base, end, n)) {
    size_t stop = next_same(page, base, start, n);
    cn += run_ctrl_bytes(end, start, stop - start);
    ln += stop - start;
    runs++;
    end = stop;
    if (cn + ln >= limit) return -1;
  }
  cn += varint_bytes((uint32_t)runs);
  if (cn + ln >= limit) return -1;
  size_t c = put_varint(ctrl, (uint32_t)runs), l = 0;
  end = 0;
  for (size_t start = next_diff(page, base, 0, n); start < n; start = next_diff(page, base, end, n)) {
    size_t stop = next_same(page, base, start, n), len = stop - start;
    uint32_t words = run_words(end, start);
    ctrl[c++] = (uint8_t)((words < TOKEN_WORDS ? words : TOKEN_WORDS) << 5 | (start % 8) << 2 | run_class(len));
    if (words >= TOKEN_WORDS) c += put_varint(ctrl + c, words - TOKEN_WORDS);
    if (len >= 4) c += put_varint(ctrl + c, (uint32_t)(len - 4));
    if (news) memcpy(news + l, page + start, len);
    for (size_t i = start; i < stop; i++) lits[l++] = page[i] ^ base[i];
    end = stop;
  }
  *ctrl_len = c;
  *lit_len = l;
  return 0;
}

int32_t dwcp_delta_encode(const uint8_t *src, uint32_t len, const uint8_t *base, uint32_t base_len,
                          uint32_t page_size, uint32_t delta_share, uint8_t *kinds, uint32_t kinds_cap,
                          uint8_t *ctrl, uint32_t ctrl_cap, uint8_t *lits, uint32_t lits_cap, uint8_t *news,
                          uint32_t news_cap, uint8_t *whole, uint32_t whole_cap, uint32_t *out7) {
  int32_t status = check_page_size(page_size);
  if (status < 0) return status;
  if (delta_share < 1 || delta_share > 256)
    return dwcp_fail(DWCP_EINVAL, "delta share %u/256 is outside 1..256", delta_share);
  if (len > INT32_MAX) return dwcp_fail(DWCP_EINVAL, "%u bytes are too many for one call", len);
  uint32_t pages = page_count(len, page_size);
  uint32_t need = kinds_bytes(pages);
  if (kinds_cap < need)
    return dwcp_fail(DWCP_ENOSPC, "kind map holds %u bytes, %u pages need %u", kinds_cap, pages, need);
  /* A delta page's bytes are fewer than the page's and a whole page is the page: len bounds each section. */
  if (ctrl_cap < len || lits_cap < len || whole_cap < len || (news && news_cap < len))
    return dwcp_fail(DWCP_ENOSPC,
                     "control, literal, new-literal and whole buffers hold %u, %u, %u and %u bytes; a %u-byte chunk "
                     "needs %u each",
                     ctrl_cap, lits_cap, news ? news_cap : len, whole_cap, len, len);
  memset(kinds, 0, need);
  size_t c = 0, l = 0, w = 0;
  uint32_t count[4] = {0, 0, 0, 0};
  for (uint32_t i = 0; i < pages; i++) {
    size_t off = (size_t)i * page_size;
    size_t n = len - off < page_size ? len - off : page_size;
    int kind = KIND_WHOLE;
    if (all_zero(src + off, n)) {
      kind = KIND_ZERO;
    } else if (off + n <= base_len) {
      if (memcmp(src + off, base + off, n) == 0) {
        kind = KIND_UNCHANGED;
      } else {
        size_t cn, ln;
        size_t limit = n * delta_share / 256;
        uint8_t *page_news = news ? news + l : NULL;
        if (encode_page(src + off, base + off, n, limit, ctrl + c, lits + l, page_news, &cn, &ln) == 0) {
          kind = KIND_DELTA;
          c += cn;
          l += ln;
        }
      }
    }
    if (kind == KIND_WHOLE) {
      memcpy(whole + w, src + off, n);
      w += n;
    }
    kinds[i / 4] |= (uint8_t)(kind << (2 * (i % 4)));
    count[kind]++;
  }
  out7[0] = (uint32_t)c;
  out7[1] = (uint32_t)l;
  out7[2] = (uint32_t)w;
  for (int k = 0; k < 4; k++) out7[3 + k] = count[k];
  return DWCP_OK;
}

/* Reads a varint at in[*pos], in_len bounding it; -1 when it runs past the input or past 3 bytes. */
static int64_t get_varint(const uint8_t *in, size_t in_len, size_t *pos) {
  uint32_t v = 0;
  for (int i = 0; i < MAX_VARINT_BYTES; i++) {
    if (*pos >= in_len) return -1;
    uint8_t b = in[(*pos)++];
    v |= (uint32_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) return v;
  }
  return -1;
}

/* Applies one delta page's runs to dst (which holds the base page, n bytes), reading ctrl from *c and
 * lits (XOR-ed into dst, or with lits_new written over it) from *l; advances both past the page. */
static int32_t decode_page(const uint8_t *ctrl, size_t ctrl_len, size_t *c, const uint8_t *lits, size_t lits_len,
                           size_t *l, int lits_new, uint8_t *dst, size_t n, uint32_t page) {
  int64_t runs = get_varint(ctrl, ctrl_len, c);
  if (runs < 0) return dwcp_fail(DWCP_ECORRUPT, "page %u: run count is truncated or too long", page);
  if (runs == 0 || (uint64_t)runs > n)
    return dwcp_fail(DWCP_ECORRUPT, "page %u: %lld runs in a %zu-byte page", page, (long long)runs, n);
  size_t at = 0; /* the previous run's end */
  for (int64_t r = 0; r < runs; r++) {
    if (*c >= ctrl_len) return dwcp_fail(DWCP_ECORRUPT, "page %u: run %lld is missing", page, (long long)r);
    uint8_t token = ctrl[(*c)++];
    int64_t words = token >> 5;
    if (words == TOKEN_WORDS) {
      int64_t more = get_varint(ctrl, ctrl_len, c);
      if (more < 0)
        return dwcp_fail(DWCP_ECORRUPT, "page %u: run %lld's place is truncated or too long", page, (long long)r);
      words += more;
    }
    uint64_t start = (at / 8 + (uint64_t)words) * 8 + (token >> 2 & 7), len = (token & 3) + 1;
    if (len == 4) {
      int64_t more = get_varint(ctrl, ctrl_len, c);
      if (more < 0) return dwcp_fail(DWCP_ECORRUPT, "page %u: run %lld's length is truncated", page, (long long)r);
      len += (uint64_t)more;
    }
    if (start < at || start + len > n)
      return dwcp_fail(DWCP_ECORRUPT, "page %u: run at %llu of %llu bytes is not within %zu..%zu", page,
                       (unsigned long long)start, (unsigned long long)len, at, n);
    if (len > lits_len - *l)
      return dwcp_fail(DWCP_ECORRUPT, "page %u: run of %llu bytes passes the end of the literal stream", page,
                       (unsigned long long)len);
    at = start;
    if (lits_new) memcpy(dst + at, lits + *l, len);
    else
      for (size_t i = 0; i < len; i++) dst[at + i] ^= lits[*l + i];
    at += len;
    *l += len;
  }
  return DWCP_OK;
}

int32_t dwcp_delta_decode(const uint8_t *kinds, uint32_t kinds_len, const uint8_t *ctrl, uint32_t ctrl_len,
                          const uint8_t *lits, uint32_t lits_len, int32_t lits_form, const uint8_t *whole,
                          uint32_t whole_len, const uint8_t *base, uint32_t base_len, uint32_t page_size,
                          uint8_t *dst, uint32_t len, uint32_t dst_cap, uint32_t *counts4) {
  int32_t status = check_page_size(page_size);
  if (status < 0) return status;
  if (lits_form != DWCP_LITS_XOR && lits_form != DWCP_LITS_NEW)
    return dwcp_fail(DWCP_EINVAL, "literal form %d is neither XOR (0) nor new bytes (1)", lits_form);
  if (len > INT32_MAX) return dwcp_fail(DWCP_EINVAL, "%u bytes are too many for one call", len);
  if (len > dst_cap) return dwcp_fail(DWCP_ENOSPC, "destination holds %u bytes, need %u", dst_cap, len);
  uint32_t pages = page_count(len, page_size);
  uint32_t need = kinds_bytes(pages);
  if (kinds_len != need)
    return dwcp_fail(DWCP_ECORRUPT, "kind map has %u bytes, %u pages of %u bytes need %u", kinds_len, pages,
                     page_size, need);
  if (pages % 4 != 0 && kinds[need - 1] >> (2 * (pages % 4)) != 0)
    return dwcp_fail(DWCP_ECORRUPT, "kind map marks pages past the %u pages of %u bytes", pages, len);
  size_t c = 0, l = 0, w = 0;
  uint32_t count[4] = {0, 0, 0, 0};
  for (uint32_t i = 0; i < pages; i++) {
    size_t off = (size_t)i * page_size;
    size_t n = len - off < page_size ? len - off : page_size;
    int kind = kinds[i / 4] >> (2 * (i % 4)) & 3;
    if ((kind == KIND_UNCHANGED || kind == KIND_DELTA) && off + n > base_len)
      return dwcp_fail(DWCP_ECORRUPT, "page %u refers to the base, which ends at %u", i, base_len);
    switch (kind) {
    case KIND_UNCHANGED: memcpy(dst + off, base + off, n); break;
    case KIND_ZERO: memset(dst + off, 0, n); break;
    case KIND_DELTA:
      memcpy(dst + off, base + off, n);
      status = decode_page(ctrl, ctrl_len, &c, lits, lits_len, &l, lits_form == DWCP_LITS_NEW, dst + off, n, i);
      if (status < 0) return status;
      break;
    default:
      if (n > whole_len - w)
        return dwcp_fail(DWCP_ECORRUPT, "page %u: the whole section ends at %u bytes", i, whole_len);
      memcpy(dst + off, whole + w, n);
      w += n;
    }
    count[kind]++;
  }
  if (c != ctrl_len) return dwcp_fail(DWCP_ECORRUPT, "control stream has %u bytes, its pages use %zu", ctrl_len, c);
  if (l != lits_len) return dwcp_fail(DWCP_ECORRUPT, "literal stream has %u bytes, its pages use %zu", lits_len, l);
  if (w != whole_len)
    return dwcp_fail(DWCP_ECORRUPT, "whole section has %u bytes, its pages use %zu", whole_len, w);
  for (int k = 0; k < 4; k++) counts4[k] = count[k];
  return (int32_t)len;
}

/* Folds data into a 16-byte running hash: acc = XXH3-128(acc ‖ XXH3-128(data)), canonical (big-endian)
 * bytes. Hashing a file piece by piece this way needs no state beyond acc, which the caller owns. */
int32_t dwcp_xxh3_128_fold(uint8_t *acc16, const uint8_t *data, uint32_t len) {
  uint8_t pair[32];
  memcpy(pair, acc16, 16);
  XXH128_canonicalFromHash((XXH128_canonical_t *)(pair + 16), XXH3_128bits(data, len));
  XXH128_canonicalFromHash((XXH128_canonical_t *)acc16, XXH3_128bits(pair, sizeof pair));
  return DWCP_OK;
}
