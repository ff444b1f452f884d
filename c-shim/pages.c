/* Page mechanics for the HDE encoder: find the all-zero pages of a buffer, pack the other pages
 * densely, and unpack them back. A bitmap has one bit per page, LSB-first within each byte (bit i is
 * bitmap[i / 8] >> (i % 8) & 1); a set bit marks a zero page. The last page of a buffer may be partial.
 * Bits past the last page must be clear. Which pages to send, and how, is decided in TypeScript. */
#include "dwcp.h"
#include "page_util.h"

#include <string.h>

static inline uint32_t bitmap_bytes(uint32_t pages) { return pages / 8 + (pages % 8 != 0); }

/* GCC/Clang vector extension: one SSE2/NEON register; plain C elsewhere the compiler supports it. */
typedef uint64_t vec128 __attribute__((vector_size(16)));

static inline vec128 load128(const uint8_t *p) {
  vec128 v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* 1 when the n bytes at p are all zero. The first word is tested alone so that a data page leaves at
 * once; then 128 bytes are OR-ed per step with one branch per step, so a zero page is scanned at the
 * speed the caches and memory deliver (a non-zero byte ends the scan within its 128-byte step). */
static int all_zero(const uint8_t *p, size_t n) {
  size_t i = 0;
  if (n >= 8 && load64(p) != 0) return 0;
  for (; i + 128 <= n; i += 128) {
    vec128 v = load128(p + i) | load128(p + i + 16) | load128(p + i + 32) | load128(p + i + 48) |
               load128(p + i + 64) | load128(p + i + 80) | load128(p + i + 96) | load128(p + i + 112);
    if ((v[0] | v[1]) != 0) return 0;
  }
  for (; i + 8 <= n; i += 8)
    if (load64(p + i) != 0) return 0;
  for (; i < n; i++)
    if (p[i] != 0) return 0;
  return 1;
}

static inline int is_zero_page(const uint8_t *bitmap, uint32_t page) { return bitmap[page / 8] >> (page % 8) & 1; }

/* Bytes of src that the bitmap leaves to travel (pages whose bit is clear), or -1 when a bit past the
 * last page is set. Reads exactly bitmap_bytes(pages) bytes of the bitmap. */
static int64_t kept_bytes(const uint8_t *bitmap, uint32_t len, uint32_t page_size, uint32_t pages) {
  uint32_t full = pages / 8;
  uint64_t zero_pages = 0;
  for (uint32_t b = 0; b < full; b++) zero_pages += (uint64_t)__builtin_popcount(bitmap[b]);
  if (pages % 8 != 0) {
    uint8_t last = bitmap[full];
    if (last >> (pages % 8) != 0) return -1;
    zero_pages += (uint64_t)__builtin_popcount(last);
  }
  if (pages == 0) return 0;
  /* Every page is page_size long except perhaps the last; count it as full, then correct. */
  uint64_t zero = zero_pages * page_size;
  uint32_t last_len = len - (pages - 1) * page_size;
  if (is_zero_page(bitmap, pages - 1)) zero -= page_size - last_len;
  return (int64_t)len - (int64_t)zero;
}

int32_t dwcp_zero_pages(const uint8_t *src, uint32_t len, uint32_t page_size, uint8_t *bitmap_out,
                        uint32_t bitmap_cap) {
  int32_t status = check_page_size(page_size);
  if (status < 0) return status;
  uint32_t pages = page_count(len, page_size);
  uint32_t need = bitmap_bytes(pages);
  if (need > bitmap_cap)
    return dwcp_fail(DWCP_ENOSPC, "bitmap holds %u bytes, %u pages need %u", bitmap_cap, pages, need);
  int32_t zeros = 0;
  for (uint32_t b = 0; b < need; b++) {
    unsigned bits = 0;
    for (uint32_t j = 0; j < 8; j++) {
      uint32_t page = b * 8 + j;
      if (page >= pages) break;
      size_t off = (size_t)page * page_size;
      size_t n = len - off < page_size ? len - off : page_size;
      bits |= (unsigned)all_zero(src + off, n) << j;
    }
    bitmap_out[b] = (uint8_t)bits;
    zeros += __builtin_popcount(bits);
  }
  return zeros;
}

int32_t dwcp_pack_pages(const uint8_t *src, uint32_t len, uint32_t page_size, const uint8_t *bitmap, uint8_t *dst,
                        uint32_t dst_cap) {
  int32_t status = check_page_size(page_size);
  if (status < 0) return status;
  uint32_t pages = page_count(len, page_size);
  int64_t kept = kept_bytes(bitmap, len, page_size, pages);
  if (kept < 0) return dwcp_fail(DWCP_EINVAL, "bitmap marks pages past the %u pages of %u bytes", pages, len);
  if (kept > INT32_MAX) return dwcp_fail(DWCP_EINVAL, "%lld packed bytes are too many for one call", (long long)kept);
  if (kept > dst_cap) return dwcp_fail(DWCP_ENOSPC, "destination holds %u bytes, need %lld", dst_cap, (long long)kept);
  size_t written = 0;
  for (uint32_t i = 0; i < pages;) {
    if (is_zero_page(bitmap, i)) {
      i++;
      continue;
    }
    uint32_t j = i + 1;
    while (j < pages && !is_zero_page(bitmap, j)) j++;
    size_t off = (size_t)i * page_size;
    size_t end = (size_t)j * page_size < len ? (size_t)j * page_size : len;
    memcpy(dst + written, src + off, end - off); /* one copy per run of data pages */
    written += end - off;
    i = j;
  }
  return (int32_t)written;
}

int32_t dwcp_unpack_pages(const uint8_t *packed, uint32_t packed_len, uint32_t page_size, const uint8_t *bitmap,
                          uint32_t len, uint8_t *dst, uint32_t dst_cap) {
  int32_t status = check_page_size(page_size);
  if (status < 0) return status;
  if (len > INT32_MAX) return dwcp_fail(DWCP_EINVAL, "%u bytes are too many for one call", len);
  if (len > dst_cap) return dwcp_fail(DWCP_ENOSPC, "destination holds %u bytes, need %u", dst_cap, len);
  uint32_t pages = page_count(len, page_size);
  int64_t kept = kept_bytes(bitmap, len, page_size, pages);
  if (kept < 0) return dwcp_fail(DWCP_ECORRUPT, "bitmap marks pages past the %u pages of %u bytes", pages, len);
  if (kept != packed_len)
    return dwcp_fail(DWCP_ECORRUPT, "bitmap leaves %lld bytes of data pages, packed input has %u", (long long)kept,
                     packed_len);
  size_t read = 0;
  for (uint32_t i = 0; i < pages;) {
    int zero = is_zero_page(bitmap, i);
    uint32_t j = i + 1;
    while (j < pages && is_zero_page(bitmap, j) == zero) j++;
    size_t off = (size_t)i * page_size;
    size_t end = (size_t)j * page_size < len ? (size_t)j * page_size : len;
    if (zero) {
      memset(dst + off, 0, end - off);
    } else {
      memcpy(dst + off, packed + read, end - off);
      read += end - off;
    }
    i = j;
  }
  return (int32_t)len;
}
