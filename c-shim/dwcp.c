/* Error reporting, version and checksum entry points. */
#include "dwcp.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>
#include <lz4.h>
#include <zstd.h>

/* Errors are process-wide rather than thread-local: nonblocking FFI calls run on Deno's worker
 * threads, and the caller asks for the message from the main thread. */
static pthread_mutex_t error_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_error[512] = "";

int32_t dwcp_fail(int32_t status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pthread_mutex_lock(&error_lock);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  pthread_mutex_unlock(&error_lock);
  va_end(ap);
  return status;
}

static int32_t copy_out(const char *text, uint8_t *out, uint32_t cap) {
  size_t n = strlen(text);
  if (n > cap) return dwcp_fail(DWCP_ENOSPC, "output buffer of %u bytes is too small for %zu bytes", cap, n);
  memcpy(out, text, n);
  return (int32_t)n;
}

int32_t dwcp_abi_version(void) { return 3; }

int32_t dwcp_last_error(uint8_t *out, uint32_t cap) {
  pthread_mutex_lock(&error_lock);
  size_t n = strnlen(last_error, sizeof last_error);
  if (n > cap) n = cap;
  memcpy(out, last_error, n);
  pthread_mutex_unlock(&error_lock);
  return (int32_t)n;
}

int32_t dwcp_xxh3_64(const uint8_t *data, uint32_t len, uint8_t *out8) {
  XXH64_hash_t h = XXH3_64bits(data, len);
  XXH64_canonicalFromHash((XXH64_canonical_t *)out8, h); /* big-endian, same bytes on every host */
  return DWCP_OK;
}

int32_t dwcp_lib_versions(uint8_t *out, uint32_t cap) {
  char text[256];
  unsigned xxh = XXH_versionNumber(); /* major*10000 + minor*100 + patch */
  snprintf(text, sizeof text, "{\"zstd\":\"%s\",\"lz4\":\"%s\",\"xxhash\":\"%u.%u.%u\"}", ZSTD_versionString(),
           LZ4_versionString(), xxh / 10000, xxh / 100 % 100, xxh % 100);
  return copy_out(text, out, cap);
}
