/* Compression contexts for zstd, lz4 (frame format) and snappy, kept in a handle table so a
 * context can be reused across chunks. A handle must not be used by two calls at once; the
 * table itself is locked, so different handles may be used from different threads. */
#include "dwcp.h"

#include <lz4frame.h>
#include <pthread.h>
#include <snappy-c.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

#define MAX_CODECS 1024
/* ZSTD_WINDOWLOG_LIMIT_DEFAULT, which zstd.h declares only in its experimental section. */
#define ZSTD_WINDOW_LOG_DECODERS_ACCEPT 27

struct codec {
  int32_t kind; /* enum dwcp_codec; 0 marks a free slot */
  int32_t level;
  ZSTD_CCtx *zc;
  ZSTD_DCtx *zd;
  LZ4F_cctx *lc;
  LZ4F_dctx *ld;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct codec table[MAX_CODECS + 1]; /* slot 0 unused so that 0 is never a handle */

static struct codec *lookup(uint32_t handle) {
  if (handle == 0 || handle > MAX_CODECS) return NULL;
  pthread_mutex_lock(&table_lock);
  struct codec *c = table[handle].kind ? &table[handle] : NULL;
  pthread_mutex_unlock(&table_lock);
  return c;
}

static void release(struct codec *c) {
  ZSTD_freeCCtx(c->zc);
  ZSTD_freeDCtx(c->zd);
  if (c->lc) LZ4F_freeCompressionContext(c->lc);
  if (c->ld) LZ4F_freeDecompressionContext(c->ld);
  memset(c, 0, sizeof *c);
}

int32_t dwcp_codec_new(int32_t kind, int32_t level) {
  struct codec c = {.kind = kind, .level = level};
  switch (kind) {
  case DWCP_CODEC_ZSTD:
    if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
      return dwcp_fail(DWCP_EINVAL, "zstd level %d is outside %d..%d", level, ZSTD_minCLevel(), ZSTD_maxCLevel());
    c.zc = ZSTD_createCCtx();
    c.zd = ZSTD_createDCtx();
    if (!c.zc || !c.zd) goto nomem;
    /* The window spans the whole input (zstd shrinks it to the input's size): a chunk is one frame, and
     * the levels' own windows (2 MiB at level 3) forget repeats further apart than that. On a 1 GiB
     * guest's memory in 16 MiB chunks, level 3 then saves 88.0 % instead of 85.6 %, and runs faster for
     * the long matches it finds. 2^27 is the most a decoder accepts without being told (zstd -d too). */
    if (ZSTD_isError(ZSTD_CCtx_setParameter(c.zc, ZSTD_c_compressionLevel, level)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c.zc, ZSTD_c_windowLog, ZSTD_WINDOW_LOG_DECODERS_ACCEPT)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c.zc, ZSTD_c_checksumFlag, 0))) {
      release(&c);
      return dwcp_fail(DWCP_EFAIL, "zstd rejected level %d", level);
    }
    break;
  case DWCP_CODEC_LZ4:
    if (LZ4F_isError(LZ4F_createCompressionContext(&c.lc, LZ4F_VERSION)) ||
        LZ4F_isError(LZ4F_createDecompressionContext(&c.ld, LZ4F_VERSION)))
      goto nomem;
    break;
  case DWCP_CODEC_SNAPPY:
  case DWCP_CODEC_NONE:
    break;
  default:
    return dwcp_fail(DWCP_EINVAL, "unknown codec %d (expected 0=none, 1=lz4, 2=zstd, 3=snappy)", kind);
  }
  pthread_mutex_lock(&table_lock);
  for (uint32_t h = 1; h <= MAX_CODECS; h++) {
    if (table[h].kind == 0) {
      table[h] = c;
      table[h].kind = kind == DWCP_CODEC_NONE ? -1 : kind; /* -1 keeps the slot busy for "none" */
      pthread_mutex_unlock(&table_lock);
      return (int32_t)h;
    }
  }
  pthread_mutex_unlock(&table_lock);
  release(&c);
  return dwcp_fail(DWCP_ENOMEM, "all %d codec handles are in use; free some with dwcp_codec_free", MAX_CODECS);
nomem:
  release(&c);
  return dwcp_fail(DWCP_ENOMEM, "could not allocate a codec context");
}

int32_t dwcp_codec_free(uint32_t handle) {
  pthread_mutex_lock(&table_lock);
  if (handle == 0 || handle > MAX_CODECS || table[handle].kind == 0) {
    pthread_mutex_unlock(&table_lock);
    return dwcp_fail(DWCP_EINVAL, "codec handle %u is not open", handle);
  }
  release(&table[handle]);
  pthread_mutex_unlock(&table_lock);
  return DWCP_OK;
}

static const LZ4F_preferences_t lz4_prefs = {
    .frameInfo = {.blockSizeID = LZ4F_max4MB, .contentChecksumFlag = LZ4F_noContentChecksum},
};

int32_t dwcp_compress_bound(int32_t kind, uint32_t src_len) {
  size_t bound;
  switch (kind) {
  case DWCP_CODEC_NONE: bound = src_len; break;
  case DWCP_CODEC_ZSTD: bound = ZSTD_compressBound(src_len); break;
  case DWCP_CODEC_LZ4: bound = LZ4F_compressFrameBound(src_len, &lz4_prefs); break;
  case DWCP_CODEC_SNAPPY: bound = snappy_max_compressed_length(src_len); break;
  default: return dwcp_fail(DWCP_EINVAL, "unknown codec %d", kind);
  }
  if (bound > INT32_MAX) return dwcp_fail(DWCP_EINVAL, "input of %u bytes is too large for one call", src_len);
  return (int32_t)bound;
}

int32_t dwcp_compress(uint32_t handle, const uint8_t *src, uint32_t src_len, uint8_t *dst, uint32_t dst_cap) {
  struct codec *c = lookup(handle);
  if (!c) return dwcp_fail(DWCP_EINVAL, "codec handle %u is not open", handle);
  switch (c->kind) {
  case -1:
    if (src_len > dst_cap) return dwcp_fail(DWCP_ENOSPC, "destination holds %u bytes, need %u", dst_cap, src_len);
    memcpy(dst, src, src_len);
    return (int32_t)src_len;
  case DWCP_CODEC_ZSTD: {
    size_t n = ZSTD_compress2(c->zc, dst, dst_cap, src, src_len);
    if (ZSTD_isError(n)) {
      return dwcp_fail(ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? DWCP_ENOSPC : DWCP_EFAIL,
                       "zstd compress: %s", ZSTD_getErrorName(n));
    }
    return (int32_t)n;
  }
  case DWCP_CODEC_LZ4: {
    LZ4F_preferences_t prefs = lz4_prefs;
    prefs.compressionLevel = c->level;
    prefs.frameInfo.contentSize = src_len;
    /* Begin/update/end on a reused context: the one-shot LZ4F_compressFrame allocates a context per call. */
    size_t head = LZ4F_compressBegin(c->lc, dst, dst_cap, &prefs);
    if (LZ4F_isError(head)) return dwcp_fail(DWCP_ENOSPC, "lz4 compress: %s", LZ4F_getErrorName(head));
    size_t body = LZ4F_compressUpdate(c->lc, dst + head, dst_cap - head, src, src_len, NULL);
    if (LZ4F_isError(body)) return dwcp_fail(DWCP_ENOSPC, "lz4 compress: %s", LZ4F_getErrorName(body));
    size_t tail = LZ4F_compressEnd(c->lc, dst + head + body, dst_cap - head - body, NULL);
    if (LZ4F_isError(tail)) return dwcp_fail(DWCP_ENOSPC, "lz4 compress: %s", LZ4F_getErrorName(tail));
    return (int32_t)(head + body + tail);
  }
  case DWCP_CODEC_SNAPPY: {
    size_t n = dst_cap;
    snappy_status s = snappy_compress((const char *)src, src_len, (char *)dst, &n);
    if (s != SNAPPY_OK) return dwcp_fail(DWCP_ENOSPC, "snappy compress: destination of %u bytes too small", dst_cap);
    return (int32_t)n;
  }
  }
  return dwcp_fail(DWCP_EINVAL, "codec handle %u has unknown kind %d", handle, c->kind);
}

int32_t dwcp_decompress(uint32_t handle, const uint8_t *src, uint32_t src_len, uint8_t *dst, uint32_t dst_cap) {
  struct codec *c = lookup(handle);
  if (!c) return dwcp_fail(DWCP_EINVAL, "codec handle %u is not open", handle);
  switch (c->kind) {
  case -1:
    if (src_len > dst_cap) return dwcp_fail(DWCP_ENOSPC, "destination holds %u bytes, need %u", dst_cap, src_len);
    memcpy(dst, src, src_len);
    return (int32_t)src_len;
  case DWCP_CODEC_ZSTD: {
    size_t n = ZSTD_decompressDCtx(c->zd, dst, dst_cap, src, src_len);
    if (ZSTD_isError(n)) {
      return dwcp_fail(ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? DWCP_ENOSPC : DWCP_ECORRUPT,
                       "zstd decompress: %s", ZSTD_getErrorName(n));
    }
    return (int32_t)n;
  }
  case DWCP_CODEC_LZ4: {
    /* One call must consume one whole frame: anything else is a truncated or oversized frame. */
    LZ4F_resetDecompressionContext(c->ld);
    size_t out = dst_cap, in = src_len;
    size_t r = LZ4F_decompress(c->ld, dst, &out, src, &in, NULL);
    if (LZ4F_isError(r)) return dwcp_fail(DWCP_ECORRUPT, "lz4 decompress: %s", LZ4F_getErrorName(r));
    if (r != 0 || in != src_len)
      return dwcp_fail(out == dst_cap ? DWCP_ENOSPC : DWCP_ECORRUPT,
                       "lz4 decompress: frame incomplete or larger than %u bytes", dst_cap);
    return (int32_t)out;
  }
  case DWCP_CODEC_SNAPPY: {
    size_t n;
    if (snappy_uncompressed_length((const char *)src, src_len, &n) != SNAPPY_OK)
      return dwcp_fail(DWCP_ECORRUPT, "snappy decompress: malformed header");
    if (n > dst_cap) return dwcp_fail(DWCP_ENOSPC, "snappy decompress: needs %zu bytes, destination holds %u", n, dst_cap);
    if (snappy_uncompress((const char *)src, src_len, (char *)dst, &n) != SNAPPY_OK)
      return dwcp_fail(DWCP_ECORRUPT, "snappy decompress: malformed input");
    return (int32_t)n;
  }
  }
  return dwcp_fail(DWCP_EINVAL, "codec handle %u has unknown kind %d", handle, c->kind);
}
