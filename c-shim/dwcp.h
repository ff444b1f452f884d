/* libdwcp: the C shim under dwcp's Deno FFI bindings (ffi/symbols.ts holds the matching table).
 *
 * ABI rules: every function returns int32_t; a negative value is an error whose message
 * dwcp_last_error() returns. Handles are uint32_t. Buffers belong to the caller. No policy lives here. */
#ifndef DWCP_H
#define DWCP_H
#include <stddef.h>
#include <stdint.h>

enum dwcp_status {
  DWCP_OK = 0,
  DWCP_EINVAL = -1,     /* bad argument */
  DWCP_ENOSPC = -2,     /* destination buffer too small */
  DWCP_ECORRUPT = -3,   /* compressed input is malformed */
  DWCP_ENOMEM = -4,     /* allocation failed or handle table full */
  DWCP_EUNAVAIL = -5,   /* optional library or device missing */
  DWCP_EFAIL = -6,      /* the underlying library reported an error */
};

enum dwcp_codec { DWCP_CODEC_NONE = 0, DWCP_CODEC_LZ4 = 1, DWCP_CODEC_ZSTD = 2, DWCP_CODEC_SNAPPY = 3 };

/* Records an error message for dwcp_last_error and returns status. Thread-safe. */
int32_t dwcp_fail(int32_t status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int32_t dwcp_abi_version(void);
int32_t dwcp_last_error(uint8_t *out, uint32_t cap);
int32_t dwcp_xxh3_64(const uint8_t *data, uint32_t len, uint8_t *out8);
int32_t dwcp_lib_versions(uint8_t *out, uint32_t cap);

int32_t dwcp_codec_new(int32_t codec, int32_t level);
int32_t dwcp_codec_free(uint32_t handle);
int32_t dwcp_compress_bound(int32_t codec, uint32_t src_len);
int32_t dwcp_compress(uint32_t handle, const uint8_t *src, uint32_t src_len, uint8_t *dst, uint32_t dst_cap);
int32_t dwcp_decompress(uint32_t handle, const uint8_t *src, uint32_t src_len, uint8_t *dst, uint32_t dst_cap);

/* Zero pages (pages.c). Bitmaps: bit i, LSB-first within each byte, set when page i is all zero; the last
 * page may be partial; bits past the last page are clear. page_size is a power of two in 512..65536. */
int32_t dwcp_zero_pages(const uint8_t *src, uint32_t len, uint32_t page_size, uint8_t *bitmap_out,
                        uint32_t bitmap_cap);
int32_t dwcp_pack_pages(const uint8_t *src, uint32_t len, uint32_t page_size, const uint8_t *bitmap, uint8_t *dst,
                        uint32_t dst_cap);
int32_t dwcp_unpack_pages(const uint8_t *packed, uint32_t packed_len, uint32_t page_size, const uint8_t *bitmap,
                          uint32_t len, uint8_t *dst, uint32_t dst_cap);

int32_t dwcp_rdma_devices(uint8_t *out, uint32_t cap);

int32_t dwcp_ort_load(const char *path);
int32_t dwcp_ort_version(uint8_t *out, uint32_t cap);
#endif
