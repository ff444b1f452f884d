/* ONNX Runtime, loaded at run time with dlopen so that a host without it still runs every other
 * part of dwcp; its absence is reported, never fatal. */
#include "dwcp.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
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

/* Inference sessions (the PBA forecaster). One OrtEnv per process, shared by every session and released
 * with the last one. A session's model must take one float32 input [batch, window, features] with the
 * window and feature counts fixed and the batch free, and give one float32 output [batch, outputs]: the
 * shape is checked once at open, so a run only checks lengths. Tensors wrap the caller's buffers, so a run
 * copies nothing and allocates only ORT's small per-run values. A handle must not be freed while a run on
 * it is in flight; runs on one handle from several threads are allowed (OrtSession::Run is thread-safe). */

#define MAX_SESSIONS 64

struct session {
  OrtSession *s; /* NULL marks a free slot */
  char *input_name;
  char *output_name;
  int64_t window, features, outputs;
};

static const OrtApi *ort;      /* set with ort_base, under ort_lock */
static OrtEnv *ort_env;        /* created by the first session, released with the last */
static OrtMemoryInfo *cpu_mem; /* lives with ort_env */
static uint32_t open_sessions;
static struct session sessions[MAX_SESSIONS + 1]; /* slot 0 unused so that 0 is never a handle */

/* Turns an OrtStatus into a dwcp_fail message and releases it. */
static int32_t fail_status(OrtStatus *st, const char *what) {
  int32_t rc = dwcp_fail(DWCP_EFAIL, "%s: %s", what, ort->GetErrorMessage(st));
  ort->ReleaseStatus(st);
  return rc;
}

#define ORT_TRY(call, what)                                                                                     \
  do {                                                                                                          \
    OrtStatus *st_ = (call);                                                                                    \
    if (st_) {                                                                                                  \
      rc = fail_status(st_, what);                                                                              \
      goto out;                                                                                                 \
    }                                                                                                           \
  } while (0)

/* Called with ort_lock held. */
static int32_t env_acquire(void) {
  int32_t rc = DWCP_OK;
  if (!ort_base) return dwcp_fail(DWCP_EUNAVAIL, "ONNX Runtime is not loaded; call dwcp_ort_load first");
  if (!ort) ort = ort_base->GetApi(ORT_API_VERSION);
  if (!ort_env) {
    /* Errors only: ORT's warnings and informational lines would go to the agent's stderr. */
    ORT_TRY(ort->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "dwcp", &ort_env), "creating the ONNX Runtime environment");
    ORT_TRY(ort->CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &cpu_mem), "describing CPU memory");
  }
  open_sessions++;
  return DWCP_OK;
out:
  if (ort_env && open_sessions == 0) {
    ort->ReleaseEnv(ort_env);
    ort_env = NULL;
  }
  return rc;
}

/* Called with ort_lock held. */
static void env_release(void) {
  if (--open_sessions > 0) return;
  ort->ReleaseMemoryInfo(cpu_mem);
  cpu_mem = NULL;
  ort->ReleaseEnv(ort_env);
  ort_env = NULL;
}

static void session_clear(struct session *s) {
  if (s->s) ort->ReleaseSession(s->s);
  free(s->input_name);
  free(s->output_name);
  memset(s, 0, sizeof *s);
}

/* Reads a float32 tensor's shape; fails unless it has the given rank. */
static int32_t tensor_shape(OrtTypeInfo *info, const char *what, size_t rank, int64_t *dims) {
  int32_t rc = DWCP_OK;
  const OrtTensorTypeAndShapeInfo *t;
  ONNXTensorElementDataType type;
  size_t n;
  ORT_TRY(ort->CastTypeInfoToTensorInfo(info, &t), what);
  if (!t) {
    rc = dwcp_fail(DWCP_EINVAL, "the model's %s is not a tensor", what);
    goto out;
  }
  ORT_TRY(ort->GetTensorElementType(t, &type), what);
  ORT_TRY(ort->GetDimensionsCount(t, &n), what);
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || n != rank) {
    rc = dwcp_fail(DWCP_EINVAL, "the model's %s is a rank-%zu tensor of element type %d; expected rank %zu float32",
                   what, n, (int)type, rank);
    goto out;
  }
  ORT_TRY(ort->GetDimensions(t, dims, rank), what);
out:
  return rc;
}

/* Checks the model's single input and output and records their names and fixed dimensions. */
static int32_t session_inspect(struct session *s) {
  int32_t rc = DWCP_OK;
  size_t inputs, outputs;
  OrtAllocator *alloc = NULL;
  OrtTypeInfo *info = NULL;
  char *name = NULL;
  int64_t in_dims[3], out_dims[2];
  ORT_TRY(ort->SessionGetInputCount(s->s, &inputs), "counting the model's inputs");
  ORT_TRY(ort->SessionGetOutputCount(s->s, &outputs), "counting the model's outputs");
  if (inputs != 1 || outputs != 1) {
    rc = dwcp_fail(DWCP_EINVAL, "the model has %zu inputs and %zu outputs; a forecaster model has one of each",
                   inputs, outputs);
    goto out;
  }
  ORT_TRY(ort->GetAllocatorWithDefaultOptions(&alloc), "getting ONNX Runtime's allocator");
  ORT_TRY(ort->SessionGetInputName(s->s, 0, alloc, &name), "reading the model's input name");
  s->input_name = strdup(name);
  ORT_TRY(ort->AllocatorFree(alloc, name), "freeing a name");
  name = NULL;
  ORT_TRY(ort->SessionGetOutputName(s->s, 0, alloc, &name), "reading the model's output name");
  s->output_name = strdup(name);
  ORT_TRY(ort->AllocatorFree(alloc, name), "freeing a name");
  name = NULL;
  if (!s->input_name || !s->output_name) {
    rc = dwcp_fail(DWCP_ENOMEM, "could not copy the model's tensor names");
    goto out;
  }

  ORT_TRY(ort->SessionGetInputTypeInfo(s->s, 0, &info), "reading the model's input type");
  if ((rc = tensor_shape(info, "input", 3, in_dims)) < 0) goto out;
  ort->ReleaseTypeInfo(info);
  info = NULL;
  ORT_TRY(ort->SessionGetOutputTypeInfo(s->s, 0, &info), "reading the model's output type");
  if ((rc = tensor_shape(info, "output", 2, out_dims)) < 0) goto out;
  /* The batch dimension may be free (-1) or anything; window, features and outputs must be fixed. */
  if (in_dims[1] < 1 || in_dims[2] < 1 || out_dims[1] < 1 || in_dims[1] > INT32_MAX || in_dims[2] > INT32_MAX ||
      out_dims[1] > INT32_MAX) {
    rc = dwcp_fail(DWCP_EINVAL,
                   "the model's input is [%lld, %lld, %lld] and output [%lld, %lld]; expected [batch, window, "
                   "features] and [batch, outputs] with window, features and outputs fixed",
                   (long long)in_dims[0], (long long)in_dims[1], (long long)in_dims[2], (long long)out_dims[0],
                   (long long)out_dims[1]);
    goto out;
  }
  s->window = in_dims[1];
  s->features = in_dims[2];
  s->outputs = out_dims[1];
out:
  if (name) {
    OrtStatus *st = ort->AllocatorFree(alloc, name); /* already failing: the first error is the one to report */
    if (st) ort->ReleaseStatus(st);
  }
  if (info) ort->ReleaseTypeInfo(info);
  return rc;
}

/* Opens a session from a file path (path != NULL) or from bytes; returns its handle. */
static int32_t session_open(const char *path, const uint8_t *model, uint32_t len, int32_t intra_op_threads) {
  if (intra_op_threads < 1 || intra_op_threads > 256)
    return dwcp_fail(DWCP_EINVAL, "intra-op threads = %d; give 1..256", intra_op_threads);
  pthread_mutex_lock(&ort_lock);
  int32_t rc = env_acquire();
  if (rc < 0) {
    pthread_mutex_unlock(&ort_lock);
    return rc;
  }
  struct session s = {0};
  OrtSessionOptions *opts = NULL;
  uint32_t h = 1;
  while (h <= MAX_SESSIONS && sessions[h].s) h++;
  if (h > MAX_SESSIONS) {
    rc = dwcp_fail(DWCP_ENOMEM, "all %d forecaster sessions are in use; close some", MAX_SESSIONS);
    goto out;
  }
  ORT_TRY(ort->CreateSessionOptions(&opts), "creating session options");
  ORT_TRY(ort->SetIntraOpNumThreads(opts, intra_op_threads), "setting intra-op threads");
  ORT_TRY(ort->SetInterOpNumThreads(opts, 1), "setting inter-op threads");
  /* Spinning workers would hold cores between the agent's sparse, tiny runs. */
  ORT_TRY(ort->AddSessionConfigEntry(opts, "session.intra_op.allow_spinning", "0"), "disabling spinning");
  ORT_TRY(ort->SetSessionGraphOptimizationLevel(opts, ORT_ENABLE_ALL), "setting graph optimisation");
  if (path) {
    ORT_TRY(ort->CreateSession(ort_env, path, opts, &s.s), "loading the model");
  } else {
    if (len == 0) {
      rc = dwcp_fail(DWCP_EINVAL, "the model is 0 bytes long");
      goto out;
    }
    ORT_TRY(ort->CreateSessionFromArray(ort_env, model, len, opts, &s.s), "loading the model");
  }
  if ((rc = session_inspect(&s)) < 0) goto out;
  sessions[h] = s;
  rc = (int32_t)h;
out:
  if (opts) ort->ReleaseSessionOptions(opts);
  if (rc < 0) {
    session_clear(&s);
    env_release();
  }
  pthread_mutex_unlock(&ort_lock);
  return rc;
}

int32_t dwcp_ort_session_open_file(const char *path, int32_t intra_op_threads) {
  return session_open(path, NULL, 0, intra_op_threads);
}

int32_t dwcp_ort_session_open_bytes(const uint8_t *model, uint32_t len, int32_t intra_op_threads) {
  return session_open(NULL, model, len, intra_op_threads);
}

/* The lookup is locked; the session it returns stays valid until dwcp_ort_session_free (caller's rule). */
static struct session *session_get(uint32_t handle) {
  if (handle == 0 || handle > MAX_SESSIONS) return NULL;
  pthread_mutex_lock(&ort_lock);
  struct session *s = sessions[handle].s ? &sessions[handle] : NULL;
  pthread_mutex_unlock(&ort_lock);
  return s;
}

int32_t dwcp_ort_session_shape(uint32_t handle, int32_t *out3) {
  struct session *s = session_get(handle);
  if (!s) return dwcp_fail(DWCP_EINVAL, "forecaster session %u is not open", handle);
  out3[0] = (int32_t)s->window;
  out3[1] = (int32_t)s->features;
  out3[2] = (int32_t)s->outputs;
  return DWCP_OK;
}

int32_t dwcp_ort_session_run(uint32_t handle, const float *input, uint32_t input_len, uint32_t batch, float *output,
                             uint32_t output_cap) {
  struct session *s = session_get(handle);
  if (!s) return dwcp_fail(DWCP_EINVAL, "forecaster session %u is not open", handle);
  uint64_t row = (uint64_t)s->window * (uint64_t)s->features;
  uint64_t out_len = (uint64_t)batch * (uint64_t)s->outputs;
  if (batch < 1) return dwcp_fail(DWCP_EINVAL, "batch = 0; give at least one window");
  if ((uint64_t)input_len != (uint64_t)batch * row)
    return dwcp_fail(DWCP_EINVAL, "input holds %u floats; batch %u × window %lld × features %lld needs %llu",
                     input_len, batch, (long long)s->window, (long long)s->features,
                     (unsigned long long)(batch * row));
  if (out_len > output_cap)
    return dwcp_fail(DWCP_ENOSPC, "output holds %u floats; batch %u × outputs %lld needs %llu", output_cap, batch,
                     (long long)s->outputs, (unsigned long long)out_len);
  int32_t rc = DWCP_OK;
  OrtValue *in = NULL, *res = NULL;
  const int64_t in_shape[3] = {batch, s->window, s->features};
  const int64_t out_shape[2] = {batch, s->outputs};
  /* ORT takes a non-const pointer but only reads an input. */
  ORT_TRY(ort->CreateTensorWithDataAsOrtValue(cpu_mem, (void *)input, (size_t)input_len * sizeof(float), in_shape,
                                              3, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &in),
          "wrapping the input");
  /* A preallocated output: ORT writes the result straight into the caller's buffer. */
  ORT_TRY(ort->CreateTensorWithDataAsOrtValue(cpu_mem, output, (size_t)out_len * sizeof(float), out_shape, 2,
                                              ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &res),
          "wrapping the output");
  ORT_TRY(ort->Run(s->s, NULL, (const char *const *)&s->input_name, (const OrtValue *const *)&in, 1,
                   (const char *const *)&s->output_name, 1, &res),
          "running the model");
  rc = (int32_t)out_len;
out:
  if (in) ort->ReleaseValue(in);
  if (res) ort->ReleaseValue(res);
  return rc;
}

int32_t dwcp_ort_session_free(uint32_t handle) {
  pthread_mutex_lock(&ort_lock);
  if (handle == 0 || handle > MAX_SESSIONS || !sessions[handle].s) {
    pthread_mutex_unlock(&ort_lock);
    return dwcp_fail(DWCP_EINVAL, "forecaster session %u is not open", handle);
  }
  session_clear(&sessions[handle]);
  env_release();
  pthread_mutex_unlock(&ort_lock);
  return DWCP_OK;
}
