/**
 * The one Deno.dlopen symbol table for libdwcp (c-shim/dwcp.h). Each entry carries its C signature.
 * ABI: int32 status (negative = error, text from dwcp_last_error), uint32 handles, caller-owned buffers.
 */
export const symbols = {
  // int32_t dwcp_abi_version(void)
  dwcp_abi_version: { parameters: [], result: "i32" },
  // int32_t dwcp_last_error(uint8_t *out, uint32_t cap)
  dwcp_last_error: { parameters: ["buffer", "u32"], result: "i32" },
  // int32_t dwcp_xxh3_64(const uint8_t *data, uint32_t len, uint8_t *out8)
  dwcp_xxh3_64: { parameters: ["buffer", "u32", "buffer"], result: "i32" },
  // int32_t dwcp_lib_versions(uint8_t *out, uint32_t cap)
  dwcp_lib_versions: { parameters: ["buffer", "u32"], result: "i32" },
  // int32_t dwcp_codec_new(int32_t codec, int32_t level)
  dwcp_codec_new: { parameters: ["i32", "i32"], result: "i32" },
  // int32_t dwcp_codec_free(uint32_t handle)
  dwcp_codec_free: { parameters: ["u32"], result: "i32" },
  // int32_t dwcp_compress_bound(int32_t codec, uint32_t src_len)
  dwcp_compress_bound: { parameters: ["i32", "u32"], result: "i32" },
  // int32_t dwcp_compress(uint32_t h, const uint8_t *src, uint32_t src_len, uint8_t *dst, uint32_t dst_cap)
  dwcp_compress: { parameters: ["u32", "buffer", "u32", "buffer", "u32"], result: "i32" },
  // Same C function, run on a worker thread for large chunks (buffers must stay referenced until it settles).
  dwcp_compress_async: {
    name: "dwcp_compress",
    parameters: ["u32", "buffer", "u32", "buffer", "u32"],
    result: "i32",
    nonblocking: true,
  },
  // int32_t dwcp_decompress(uint32_t h, const uint8_t *src, uint32_t src_len, uint8_t *dst, uint32_t dst_cap)
  dwcp_decompress: { parameters: ["u32", "buffer", "u32", "buffer", "u32"], result: "i32" },
  dwcp_decompress_async: {
    name: "dwcp_decompress",
    parameters: ["u32", "buffer", "u32", "buffer", "u32"],
    result: "i32",
    nonblocking: true,
  },
  // int32_t dwcp_zero_pages(const uint8_t *src, uint32_t len, uint32_t page_size, uint8_t *bitmap_out,
  //                         uint32_t bitmap_cap)
  dwcp_zero_pages: { parameters: ["buffer", "u32", "u32", "buffer", "u32"], result: "i32" },
  // int32_t dwcp_pack_pages(const uint8_t *src, uint32_t len, uint32_t page_size, const uint8_t *bitmap,
  //                         uint8_t *dst, uint32_t dst_cap)
  dwcp_pack_pages: { parameters: ["buffer", "u32", "u32", "buffer", "buffer", "u32"], result: "i32" },
  // int32_t dwcp_unpack_pages(const uint8_t *packed, uint32_t packed_len, uint32_t page_size,
  //                           const uint8_t *bitmap, uint32_t len, uint8_t *dst, uint32_t dst_cap)
  dwcp_unpack_pages: {
    parameters: ["buffer", "u32", "u32", "buffer", "u32", "buffer", "u32"],
    result: "i32",
  },
  // int32_t dwcp_delta_encode(const uint8_t *src, uint32_t len, const uint8_t *base, uint32_t base_len,
  //                           uint32_t page_size, uint32_t delta_share, uint8_t *kinds,
  //                           uint32_t kinds_cap, uint8_t *ctrl, uint32_t ctrl_cap, uint8_t *lits,
  //                           uint32_t lits_cap, uint8_t *news, uint32_t news_cap, uint8_t *whole,
  //                           uint32_t whole_cap, uint32_t *out7)
  dwcp_delta_encode: {
    parameters: [
      "buffer",
      "u32",
      "buffer",
      "u32",
      "u32",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
    ],
    result: "i32",
  },
  // int32_t dwcp_delta_decode(const uint8_t *kinds, uint32_t kinds_len, const uint8_t *ctrl,
  //                           uint32_t ctrl_len, const uint8_t *lits, uint32_t lits_len,
  //                           int32_t lits_form, const uint8_t *whole, uint32_t whole_len,
  //                           const uint8_t *base, uint32_t base_len, uint32_t page_size, uint8_t *dst,
  //                           uint32_t len, uint32_t dst_cap, uint32_t *counts4)
  dwcp_delta_decode: {
    parameters: [
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "u32",
      "i32",
      "buffer",
      "u32",
      "buffer",
      "u32",
      "u32",
      "buffer",
      "u32",
      "u32",
      "buffer",
    ],
    result: "i32",
  },
  // int32_t dwcp_xxh3_128_fold(uint8_t *acc16, const uint8_t *data, uint32_t len)
  dwcp_xxh3_128_fold: { parameters: ["buffer", "buffer", "u32"], result: "i32" },
  // int32_t dwcp_cdc_cuts(const uint8_t *src, uint32_t len, uint32_t min_size, uint32_t avg_size,
  //                       uint32_t max_size, uint8_t *state, uint32_t *cuts, uint32_t cuts_cap)
  dwcp_cdc_cuts: {
    parameters: ["buffer", "u32", "u32", "u32", "u32", "buffer", "buffer", "u32"],
    result: "i32",
  },
  // int32_t dwcp_rdma_devices(uint8_t *out, uint32_t cap)
  dwcp_rdma_devices: { parameters: ["buffer", "u32"], result: "i32" },
  // int32_t dwcp_tcp_info(const char *local_host, uint32_t local_port, const char *remote_host,
  //                       uint32_t remote_port, uint8_t *out, uint32_t cap)
  dwcp_tcp_info: { parameters: ["buffer", "u32", "buffer", "u32", "buffer", "u32"], result: "i32" },
  // int32_t dwcp_tcp_set_congestion(const char *local_host, uint32_t local_port, const char *remote_host,
  //                                 uint32_t remote_port, const char *name)
  dwcp_tcp_set_congestion: { parameters: ["buffer", "u32", "buffer", "u32", "buffer"], result: "i32" },
  // int32_t dwcp_tcp_set_buffers(const char *local_host, uint32_t local_port, const char *remote_host,
  //                              uint32_t remote_port, int32_t send_bytes, int32_t receive_bytes)
  dwcp_tcp_set_buffers: { parameters: ["buffer", "u32", "buffer", "u32", "i32", "i32"], result: "i32" },
  // int32_t dwcp_qmp_pass_tcp(const char *monitor_path, const char *local_host, uint32_t local_port,
  //                           const char *remote_host, uint32_t remote_port, const char *fd_name,
  //                           const char *command, uint8_t *out, uint32_t cap)
  // On a worker thread: it waits on QEMU's answers.
  dwcp_qmp_pass_tcp: {
    parameters: ["buffer", "buffer", "u32", "buffer", "u32", "buffer", "buffer", "buffer", "u32"],
    result: "i32",
    nonblocking: true,
  },
  // int32_t dwcp_tcp_detach(const char *local_host, uint32_t local_port, const char *remote_host,
  //                         uint32_t remote_port)
  dwcp_tcp_detach: { parameters: ["buffer", "u32", "buffer", "u32"], result: "i32" },
  // int32_t dwcp_ort_load(const char *path)
  dwcp_ort_load: { parameters: ["buffer"], result: "i32" },
  // int32_t dwcp_ort_version(uint8_t *out, uint32_t cap)
  dwcp_ort_version: { parameters: ["buffer", "u32"], result: "i32" },
  // int32_t dwcp_ort_session_open_file(const char *path, int32_t intra_op_threads)
  dwcp_ort_session_open_file: { parameters: ["buffer", "i32"], result: "i32" },
  // int32_t dwcp_ort_session_open_bytes(const uint8_t *model, uint32_t len, int32_t intra_op_threads)
  dwcp_ort_session_open_bytes: { parameters: ["buffer", "u32", "i32"], result: "i32" },
  // int32_t dwcp_ort_session_shape(uint32_t handle, int32_t *out3)
  dwcp_ort_session_shape: { parameters: ["u32", "buffer"], result: "i32" },
  // int32_t dwcp_ort_session_run(uint32_t handle, const float *input, uint32_t input_len, uint32_t batch,
  //                              float *output, uint32_t output_cap)
  dwcp_ort_session_run: { parameters: ["u32", "buffer", "u32", "u32", "buffer", "u32"], result: "i32" },
  // int32_t dwcp_ort_session_free(uint32_t handle)
  dwcp_ort_session_free: { parameters: ["u32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

export type Shim = Deno.DynamicLibrary<typeof symbols>["symbols"];
