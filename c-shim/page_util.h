/* Helpers shared by the page-wise code (pages.c: zero pages; delta.c: page deltas). */
#ifndef DWCP_PAGE_UTIL_H
#define DWCP_PAGE_UTIL_H

#include "dwcp.h"

#include <string.h>

static inline int32_t check_page_size(uint32_t page_size) {
  if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1)) != 0)
    return dwcp_fail(DWCP_EINVAL, "page size %u is not a power of two in 512..65536", page_size);
  return DWCP_OK;
}

static inline uint32_t page_count(uint32_t len, uint32_t page_size) {
  return len / page_size + (len % page_size != 0);
}

static inline uint64_t load64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v); /* unaligned-safe; compiles to one load */
  return v;
}

#endif
