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
  // int32_t dwcp_rdma_devices(uint8_t *out, uint32_t cap)
  dwcp_rdma_devices: { parameters: ["buffer", "u32"], result: "i32" },
  // int32_t dwcp_ort_load(const char *path)
  dwcp_ort_load: { parameters: ["buffer"], result: "i32" },
  // int32_t dwcp_ort_version(uint8_t *out, uint32_t cap)
  dwcp_ort_version: { parameters: ["buffer", "u32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

export type Shim = Deno.DynamicLibrary<typeof symbols>["symbols"];
