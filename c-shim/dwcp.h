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
  DWCP_ENOTFOUND = -7,  /* the thing asked about does not exist (a TCP socket that closed) */
  DWCP_EPERM = -8,      /* the kernel refused for want of a privilege */
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

/* Page deltas (delta.c). Kind map: 2 bits per page (0 unchanged, 1 zero, 2 delta, 3 whole), page i at
 * kinds[i / 4] >> (2 * (i % 4)); ctrl and lits: the control and literal streams of the delta pages in
 * order (literals: the runs' bytes XOR the base's, or with DWCP_LITS_NEW the runs' new bytes as they are);
 * whole: the whole pages in order. encode: a page goes as a delta when its streams take fewer than
 * delta_share / 256 (1..256) of its bytes; ctrl_cap, lits_cap and whole_cap must be at least len; news,
 * when not NULL, gets the same literals in their new form (news_cap at least len); out7 = {control bytes,
 * literal bytes, whole bytes, unchanged, zero, delta, whole pages}. decode: counts4 = pages of each kind;
 * returns len. */
enum dwcp_lits_form { DWCP_LITS_XOR = 0, DWCP_LITS_NEW = 1 };
int32_t dwcp_delta_encode(const uint8_t *src, uint32_t len, const uint8_t *base, uint32_t base_len,
                          uint32_t page_size, uint32_t delta_share, uint8_t *kinds, uint32_t kinds_cap,
                          uint8_t *ctrl, uint32_t ctrl_cap, uint8_t *lits, uint32_t lits_cap, uint8_t *news,
                          uint32_t news_cap, uint8_t *whole, uint32_t whole_cap, uint32_t *out7);
int32_t dwcp_delta_decode(const uint8_t *kinds, uint32_t kinds_len, const uint8_t *ctrl, uint32_t ctrl_len,
                          const uint8_t *lits, uint32_t lits_len, int32_t lits_form, const uint8_t *whole,
                          uint32_t whole_len, const uint8_t *base, uint32_t base_len, uint32_t page_size,
                          uint8_t *dst, uint32_t len, uint32_t dst_cap, uint32_t *counts4);
/* acc16 = XXH3-128(acc16 ‖ XXH3-128(data)), canonical bytes: a file hash folded piece by piece. */
int32_t dwcp_xxh3_128_fold(uint8_t *acc16, const uint8_t *data, uint32_t len);

/* Content-defined chunking (cdc.c). state is 16 caller-owned bytes carrying the open chunk across calls
 * (all zero at a stream's start). Writes the end offsets within src of the chunks that end in src into
 * cuts (cuts_cap >= len / min_size + 1) and returns their count; the bytes after the last cut belong to the
 * chunk still open in state. */
int32_t dwcp_cdc_cuts(const uint8_t *src, uint32_t len, uint32_t min_size, uint32_t avg_size, uint32_t max_size,
                      uint8_t *state, uint32_t *cuts, uint32_t cuts_cap);

int32_t dwcp_rdma_devices(uint8_t *out, uint32_t cap);

/* TCP_INFO (tcpinfo.c) of this namespace's TCP socket with the given local and remote address (IPv4 or IPv6
 * text) and ports, as JSON; DWCP_ENOTFOUND when no such socket is open. */
int32_t dwcp_tcp_info(const char *local_host, uint32_t local_port, const char *remote_host, uint32_t remote_port,
                      uint8_t *out, uint32_t cap);
/* Sets the congestion control (TCP_CONGESTION) of this process's TCP socket with those addresses and ports:
 * DWCP_ENOTFOUND when no such socket is open here, DWCP_EUNAVAIL when the kernel has no such algorithm,
 * DWCP_EPERM when this process may not pick it (net.ipv4.tcp_allowed_congestion_control). */
int32_t dwcp_tcp_set_congestion(const char *local_host, uint32_t local_port, const char *remote_host,
                                uint32_t remote_port, const char *name);
/* Sets the send and receive buffers (SO_SNDBUF, SO_RCVBUF; 0 leaves one as it is, and the kernel doubles what
 * it is given) of this process's TCP socket with those addresses and ports; DWCP_ENOTFOUND as above. */
int32_t dwcp_tcp_set_buffers(const char *local_host, uint32_t local_port, const char *remote_host,
                             uint32_t remote_port, int32_t send_bytes, int32_t receive_bytes);

/* This process's descriptor for the TCP socket with those addresses and ports, dup()ed (the caller closes it),
 * or a negative status (DWCP_ENOTFOUND when no such socket is open here); *number, when given, gets the
 * number of the descriptor it duplicated. Internal: not in the FFI table. */
int32_t dwcp_tcp_socket_fd(const char *local_host, uint32_t local_port, const char *remote_host,
                           uint32_t remote_port, int32_t *number);
/* Hands this process's TCP socket with those addresses and ports to QEMU (qmp_fd.c): connects to the QMP
 * monitor socket at monitor_path, gives QEMU the descriptor (getfd, SCM_RIGHTS) under fd_name, then runs
 * command (one QMP command in JSON that uses fd_name, such as migrate with uri "fd:NAME") on that same
 * monitor, since QEMU keeps getfd's descriptors per monitor. Writes the command's reply line into out and
 * returns its length; DWCP_EFAIL with QEMU's words when QEMU refuses getfd. */
int32_t dwcp_qmp_pass_tcp(const char *monitor_path, const char *local_host, uint32_t local_port,
                          const char *remote_host, uint32_t remote_port, const char *fd_name, const char *command,
                          uint8_t *out, uint32_t cap);
/* Detaches this process's descriptor from its TCP socket with those addresses and ports, once another process
 * holds the socket: out of every epoll set here, and pointed at an unconnected socket, so that closing the
 * connection here no longer acts on the socket (qmp_fd.c says why). DWCP_ENOTFOUND when none is open here. */
int32_t dwcp_tcp_detach(const char *local_host, uint32_t local_port, const char *remote_host, uint32_t remote_port);

int32_t dwcp_ort_load(const char *path);
int32_t dwcp_ort_version(uint8_t *out, uint32_t cap);
/* Forecaster sessions (ort.c): a model with one float32 input [batch, window, features] and one float32 output
 * [batch, outputs]. Open returns a handle; shape writes window, features, outputs; run returns the floats
 * written (batch × outputs). */
int32_t dwcp_ort_session_open_file(const char *path, int32_t intra_op_threads);
int32_t dwcp_ort_session_open_bytes(const uint8_t *model, uint32_t len, int32_t intra_op_threads);
int32_t dwcp_ort_session_shape(uint32_t handle, int32_t *out3);
int32_t dwcp_ort_session_run(uint32_t handle, const float *input, uint32_t input_len, uint32_t batch, float *output,
                             uint32_t output_cap);
int32_t dwcp_ort_session_free(uint32_t handle);
#endif
