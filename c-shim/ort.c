/* ONNX Runtime, loaded at run time with dlopen so that a host without it still runs every other
 * part of dwcp; its absence is reported, never fatal. */
#include "dwcp.h"

#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
#include <onnxruntime_c_api.h>

static pthread_mutex_t ort_lock = PTHREAD_MUTEX_INITIALIZER;
static const OrtApiBase *ort_base;

int32_t dwcp_ort_load(const char *path) {
  pthread_mutex_lock(&ort_lock);
  int32_t rc = DWCP_OK;
  if (!ort_base) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      rc = dwcp_fail(DWCP_EUNAVAIL, "cannot load ONNX Runtime from %s: %s", path, dlerror());
    } else {
      const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(lib, "OrtGetApiBase");
      if (!get_base) {
        rc = dwcp_fail(DWCP_EUNAVAIL, "%s has no OrtGetApiBase symbol; is it ONNX Runtime?", path);
        dlclose(lib);
      } else if (!get_base()->GetApi(ORT_API_VERSION)) {
        rc = dwcp_fail(DWCP_EUNAVAIL, "ONNX Runtime %s at %s does not offer C API version %d",
                       get_base()->GetVersionString(), path, ORT_API_VERSION);
        dlclose(lib);
      } else {
        ort_base = get_base();
      }
    }
  }
  pthread_mutex_unlock(&ort_lock);
  return rc;
}

int32_t dwcp_ort_version(uint8_t *out, uint32_t cap) {
  if (!ort_base) return dwcp_fail(DWCP_EUNAVAIL, "ONNX Runtime is not loaded; call dwcp_ort_load first");
  const char *v = ort_base->GetVersionString();
  size_t n = strlen(v);
  if (n > cap) return dwcp_fail(DWCP_ENOSPC, "output buffer too small");
  memcpy(out, v, n);
  return (int32_t)n;
}
