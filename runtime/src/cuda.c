/* cuda.c — sessions of CUDA programs, through the NVIDIA driver API opened
 * with dlopen at run time, so that the runtime builds and runs without CUDA
 * (creating a CUDA session then fails with DLC_ERR_UNAVAILABLE).
 *
 * Params and optimizer state live on the device. The session's host buffers
 * mirror them and are synchronised lazily: a run that may update them (a
 * train entry) marks the device copy newer, and any host access to them
 * (views, set/load/save, init) first copies them back, then marks the host
 * copy to be uploaded before the next run, since the caller may write it.
 * A run copies the inputs into device buffers kept per tensor, calls the
 * entry's launch plan (compiled code, see DLC_CUDA_SYMBOL in program.h) with
 * device pointers, and copies the outputs back into the session's host
 * output buffers. Everything runs on the legacy default stream of the first
 * device's primary context (shared with other driver users in the process,
 * such as PyTorch), made current for the duration of each call. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The few driver API types and constants used here (cuda.h, CUDA >= 11). */
typedef int CUresult; /* CUDA_SUCCESS = 0 */
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef unsigned long long CUdeviceptr;
enum {
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_NOT_INITIALIZED = 3,
  CUDA_ERROR_INSUFFICIENT_DRIVER = 35,
  CUDA_ERROR_NO_DEVICE = 100,
  CUDA_ERROR_NO_BINARY_FOR_GPU = 209,
  CUDA_ERROR_INVALID_PTX = 218,
  CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
  CU_JIT_ERROR_LOG_BUFFER = 5,
  CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
};

#define LIBCUDA "libcuda.so.1"
#define JIT_LOG_BYTES 4096

typedef struct cuda_api {
  void *lib;
  CUresult (*init)(unsigned);
  CUresult (*device_get_count)(int *);
  CUresult (*device_get)(CUdevice *, int);
  CUresult (*device_get_name)(char *, int, CUdevice);
  CUresult (*device_get_attribute)(int *, int, CUdevice);
  CUresult (*primary_ctx_retain)(CUcontext *, CUdevice);
  CUresult (*primary_ctx_release)(CUdevice);
  CUresult (*ctx_push)(CUcontext);
  CUresult (*ctx_pop)(CUcontext *);
  CUresult (*module_load)(CUmodule *, const void *, unsigned, int *, void **);
  CUresult (*module_unload)(CUmodule);
  CUresult (*module_get_function)(CUfunction *, CUmodule, const char *);
  CUresult (*mem_alloc)(CUdeviceptr *, size_t);
  CUresult (*mem_free)(CUdeviceptr);
  CUresult (*memcpy_htod)(CUdeviceptr, const void *, size_t);
  CUresult (*memcpy_dtoh)(void *, CUdeviceptr, size_t);
  CUresult (*launch_kernel)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                            unsigned, unsigned, unsigned, CUstream, void **,
                            void **);
  CUresult (*get_error_name)(CUresult, const char **);
  CUresult (*get_error_string)(CUresult, const char **);
} cuda_api;

struct dlc_cuda_session {
  cuda_api api;
  CUdevice device;
  CUcontext ctx; /* the device's primary context, retained */
  int ctx_retained;
  CUmodule module;
  CUfunction *kernels;
  int32_t n_kernels;
  CUdeviceptr *dev;  /* per tensor: its device buffer (0: none yet) */
  size_t *dev_cap;   /* and its size in bytes */
  void **dev_table;  /* scratch: the tensor table of device pointers */
  CUdeviceptr workspace;
  size_t workspace_cap;
  int device_io;        /* run inputs and outputs are device pointers */
  int upload_pending;   /* the host copy of params and state is newer */
  int download_pending; /* the device copy is newer */
  CUresult launch_error; /* the first failed launch of the current run */
  int bad_launch;        /* the compiled code asked for an impossible launch */
  int32_t failed_kernel;
  dlc_cuda_host host;
};

/* ---- errors ---------------------------------------------------------------- */

static dlc_status status_of(CUresult r) {
  switch (r) {
  case CUDA_ERROR_OUT_OF_MEMORY:
    return DLC_ERR_OUT_OF_MEMORY;
  case CUDA_ERROR_NOT_INITIALIZED:
  case CUDA_ERROR_INSUFFICIENT_DRIVER:
  case CUDA_ERROR_NO_DEVICE:
  case CUDA_ERROR_NO_BINARY_FOR_GPU:
  case CUDA_ERROR_INVALID_PTX:
  case CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
    return DLC_ERR_UNAVAILABLE;
  default:
    return DLC_ERR_INTERNAL;
  }
}

/* "CUDA_ERROR_X (what it means)" for a result code. */
static void describe(const cuda_api *api, CUresult r, char *out, size_t n) {
  const char *name = NULL, *text = NULL;
  if (api->get_error_name == NULL || api->get_error_name(r, &name) != 0)
    name = NULL;
  if (api->get_error_string == NULL || api->get_error_string(r, &text) != 0)
    text = NULL;
  if (name != NULL)
    snprintf(out, n, "%s (%s)", name, text ? text : "no description");
  else
    snprintf(out, n, "CUDA error %d", (int)r);
}

static dlc_status cuda_fail(const cuda_api *api, CUresult r, const char *what) {
  char why[256];
  describe(api, r, why, sizeof why);
  return dlc__fail(status_of(r), "CUDA: %s failed: %s", what, why);
}

/* ---- the driver library ----------------------------------------------------- */

static int load_symbol(void *lib, const char *name, void *fn, size_t size) {
  void *p = dlsym(lib, name);
  if (p == NULL)
    return 0;
  memcpy(fn, &p, size); /* POSIX: dlsym's object pointer is the function */
  return 1;
}

static dlc_status load_api(cuda_api *api) {
  /* DLC_LIBCUDA names another driver library (tests use an emulator). */
  const char *path = getenv("DLC_LIBCUDA");
  if (path == NULL || path[0] == '\0')
    path = LIBCUDA;
  api->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (api->lib == NULL) {
    const char *why = dlerror();
    return dlc__fail(DLC_ERR_UNAVAILABLE,
                     "CUDA is unavailable: cannot load the NVIDIA driver library "
                     "%s (%s); this program was compiled for target 'cuda' and "
                     "needs an NVIDIA GPU with its driver",
                     path, why ? why : "unknown error");
  }
  /* Versioned names are those cuda.h maps the API names to. */
#define LOAD(field, name)                                                  \
  if (!load_symbol(api->lib, name, &api->field, sizeof api->field))       \
  return dlc__fail(DLC_ERR_UNAVAILABLE,                                     \
                   "CUDA is unavailable: %s has no '%s'; the NVIDIA driver " \
                   "is too old",                                            \
                   path, name)
  LOAD(get_error_name, "cuGetErrorName");
  LOAD(get_error_string, "cuGetErrorString");
  LOAD(init, "cuInit");
  LOAD(device_get_count, "cuDeviceGetCount");
  LOAD(device_get, "cuDeviceGet");
  LOAD(device_get_name, "cuDeviceGetName");
  LOAD(device_get_attribute, "cuDeviceGetAttribute");
  LOAD(primary_ctx_retain, "cuDevicePrimaryCtxRetain");
  LOAD(primary_ctx_release, "cuDevicePrimaryCtxRelease_v2");
  LOAD(ctx_push, "cuCtxPushCurrent_v2");
  LOAD(ctx_pop, "cuCtxPopCurrent_v2");
  LOAD(module_load, "cuModuleLoadDataEx");
  LOAD(module_unload, "cuModuleUnload");
  LOAD(module_get_function, "cuModuleGetFunction");
  LOAD(mem_alloc, "cuMemAlloc_v2");
  LOAD(mem_free, "cuMemFree_v2");
  LOAD(memcpy_htod, "cuMemcpyHtoD_v2");
  LOAD(memcpy_dtoh, "cuMemcpyDtoH_v2");
  LOAD(launch_kernel, "cuLaunchKernel");
#undef LOAD
  return DLC_OK;
}

/* ---- helpers --------------------------------------------------------------- */

static int is_owned(const dlc_tensor_desc *t) {
  return t->role == DLC_ROLE_PARAM || t->role == DLC_ROLE_STATE;
}

/* Bytes of tensor t with the symbols bound (checked by the caller). */
static size_t tensor_bytes(const dlc_program_desc *d, int32_t t, const int64_t *syms) {
  const dlc_tensor_desc *td = &d->tensors[t];
  size_t n = dlc__dtype_size(td->dtype);
  for (int32_t k = 0; k < td->rank; k++)
    n *= (size_t)(td->dims[k] >= 0 ? td->dims[k] : syms[-td->dims[k] - 1]);
  return n;
}

/* A device buffer of at least `bytes` in *ptr (capacity *cap), growing it. */
static dlc_status ensure(const cuda_api *api, CUdeviceptr *ptr, size_t *cap,
                         size_t bytes, const char *what) {
  if (*ptr != 0 && *cap >= bytes)
    return DLC_OK;
  if (*ptr != 0)
    api->mem_free(*ptr);
  *ptr = 0;
  *cap = 0;
  CUresult r = api->mem_alloc(ptr, bytes ? bytes : 1);
  if (r != 0) {
    *ptr = 0;
    char why[256];
    describe(api, r, why, sizeof why);
    return dlc__fail(status_of(r), "CUDA: allocating %zu bytes of device memory for %s failed: %s",
                     bytes, what, why);
  }
  *cap = bytes;
  return DLC_OK;
}

static int32_t launch(void *ctx, int32_t kernel, int64_t grid, int32_t block,
                      void **params) {
  struct dlc_cuda_session *c = (struct dlc_cuda_session *)ctx;
  if (c->launch_error != 0 || c->bad_launch)
    return 1;
  if (kernel < 0 || kernel >= c->n_kernels || grid < 1 || grid > INT32_MAX ||
      block < 1 || block > 1024) {
    c->bad_launch = 1;
    c->failed_kernel = kernel;
    return 1;
  }
  CUresult r = c->api.launch_kernel(c->kernels[kernel], (unsigned)grid, 1, 1,
                                    (unsigned)block, 1, 1, 0, NULL, params, NULL);
  if (r != 0) {
    c->launch_error = r;
    c->failed_kernel = kernel;
    return 1;
  }
  return 0;
}

/* ---- sessions -------------------------------------------------------------- */

/* Loads the module and allocates params and state; the context is current. */
static dlc_status load_program(dlc_session *s, struct dlc_cuda_session *c) {
  const dlc_cuda_program_desc *cp = s->program->cuda;
  const dlc_program_desc *d = s->desc;
  char log[JIT_LOG_BYTES] = "";
  int options[2] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *values[2] = {log, (void *)(uintptr_t)sizeof log};
  CUresult r = c->api.module_load(&c->module, cp->ptx, 2, options, values);
  if (r != 0) {
    char why[256];
    describe(&c->api, r, why, sizeof why);
    c->module = NULL;
    return dlc__fail(status_of(r),
                     "CUDA: loading the program's PTX (compiled for %s) failed: "
                     "%s%s%s; recompile with --arch for this GPU, or update the "
                     "driver",
                     cp->arch, why, log[0] ? ": " : "", log);
  }
  c->kernels = (CUfunction *)calloc((size_t)(cp->n_kernels ? cp->n_kernels : 1),
                                    sizeof(CUfunction));
  if (c->kernels == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory creating a CUDA session");
  c->n_kernels = cp->n_kernels;
  for (int32_t k = 0; k < cp->n_kernels; k++) {
    r = c->api.module_get_function(&c->kernels[k], c->module, cp->kernel_names[k]);
    if (r != 0)
      return dlc__fail(DLC_ERR_FORMAT,
                       "CUDA: the program's PTX has no kernel '%s' (error %d)",
                       cp->kernel_names[k], (int)r);
  }
  for (int32_t i = 0; i < d->n_tensors; i++) {
    if (!is_owned(&d->tensors[i]))
      continue;
    dlc_status st = ensure(&c->api, &c->dev[i], &c->dev_cap[i], s->bytes[i],
                           d->tensors[i].name);
    if (st != DLC_OK)
      return st;
  }
  return DLC_OK;
}

dlc_status dlc__cuda_session_create(dlc_session *s) {
  const dlc_cuda_program_desc *cp = s->program->cuda;
  const dlc_program_desc *d = s->desc;
  if (cp->ptx == NULL || cp->arch == NULL || cp->n_kernels < 0 ||
      (cp->n_kernels > 0 && cp->kernel_names == NULL))
    return dlc__fail(DLC_ERR_FORMAT, "malformed CUDA program descriptor");
  for (int32_t k = 0; k < cp->n_kernels; k++)
    if (cp->kernel_names[k] == NULL)
      return dlc__fail(DLC_ERR_FORMAT, "CUDA kernel %d has no name", (int)k);
  struct dlc_cuda_session *c =
      (struct dlc_cuda_session *)calloc(1, sizeof(struct dlc_cuda_session));
  if (c == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory creating a CUDA session");
  s->cuda = c; /* from here on, dlc_session_release frees what was made */
  size_t nt = (size_t)(d->n_tensors ? d->n_tensors : 1);
  c->dev = (CUdeviceptr *)calloc(nt, sizeof(CUdeviceptr));
  c->dev_cap = (size_t *)calloc(nt, sizeof(size_t));
  c->dev_table = (void **)calloc(nt, sizeof(void *));
  if (c->dev == NULL || c->dev_cap == NULL || c->dev_table == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory creating a CUDA session");
  dlc_status st = load_api(&c->api);
  if (st != DLC_OK)
    return st;
  CUresult r = c->api.init(0);
  if (r != 0) {
    char why[256];
    describe(&c->api, r, why, sizeof why);
    return dlc__fail(DLC_ERR_UNAVAILABLE, "CUDA is unavailable: cuInit failed: %s", why);
  }
  int count = 0;
  r = c->api.device_get_count(&count);
  if (r != 0 || count < 1)
    return dlc__fail(DLC_ERR_UNAVAILABLE,
                     "CUDA is unavailable: the driver sees no GPU; this program "
                     "was compiled for target 'cuda'");
  if ((r = c->api.device_get(&c->device, 0)) != 0)
    return cuda_fail(&c->api, r, "cuDeviceGet");
  int major = 0, minor = 0, want = 0;
  char name[128] = "";
  c->api.device_get_name(name, (int)sizeof name, c->device);
  c->api.device_get_attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                              c->device);
  c->api.device_get_attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                              c->device);
  if (sscanf(cp->arch, "sm_%d", &want) == 1 && major * 10 + minor < want)
    return dlc__fail(DLC_ERR_UNAVAILABLE,
                     "CUDA: the program was compiled for %s, but GPU 0 (%s) is "
                     "sm_%d%d; recompile with --arch sm_%d%d",
                     cp->arch, name, major, minor, major, minor);
  if ((r = c->api.primary_ctx_retain(&c->ctx, c->device)) != 0)
    return cuda_fail(&c->api, r, "retaining the device's primary context");
  c->ctx_retained = 1;
  if ((r = c->api.ctx_push(c->ctx)) != 0)
    return cuda_fail(&c->api, r, "making the context current");
  st = load_program(s, c);
  CUcontext popped;
  c->api.ctx_pop(&popped);
  if (st != DLC_OK)
    return st;
  c->upload_pending = 1; /* the params were initialised on the host */
  c->host.ctx = c;
  c->host.launch = launch;
  return DLC_OK;
}

void dlc__cuda_session_release(dlc_session *s) {
  struct dlc_cuda_session *c = s->cuda;
  if (c == NULL)
    return;
  if (c->ctx_retained && c->api.ctx_push(c->ctx) == 0) {
    for (int32_t i = 0; c->dev != NULL && i < s->desc->n_tensors; i++)
      if (c->dev[i] != 0)
        c->api.mem_free(c->dev[i]);
    if (c->workspace != 0)
      c->api.mem_free(c->workspace);
    if (c->module != NULL)
      c->api.module_unload(c->module);
    CUcontext popped;
    c->api.ctx_pop(&popped);
  }
  if (c->ctx_retained)
    c->api.primary_ctx_release(c->device);
  if (c->api.lib != NULL)
    dlclose(c->api.lib);
  free(c->kernels);
  free(c->dev);
  free(c->dev_cap);
  free(c->dev_table);
  free(c);
  s->cuda = NULL;
}

/* Copies every param and state tensor host -> device (up) or back. */
static dlc_status transfer_owned(const dlc_session *s, int up) {
  struct dlc_cuda_session *c = s->cuda;
  const dlc_program_desc *d = s->desc;
  for (int32_t i = 0; i < d->n_tensors; i++) {
    if (!is_owned(&d->tensors[i]) || s->bytes[i] == 0)
      continue;
    CUresult r = up ? c->api.memcpy_htod(c->dev[i], s->data[i], s->bytes[i])
                    : c->api.memcpy_dtoh(s->data[i], c->dev[i], s->bytes[i]);
    if (r != 0)
      return cuda_fail(&c->api, r, up ? "copying params to the device"
                                      : "copying params from the device");
  }
  return DLC_OK;
}

dlc_status dlc__cuda_host_access(const dlc_session *s) {
  struct dlc_cuda_session *c = s->cuda;
  if (c == NULL)
    return DLC_OK;
  if (c->download_pending) {
    CUresult r = c->api.ctx_push(c->ctx);
    if (r != 0)
      return cuda_fail(&c->api, r, "making the context current");
    dlc_status st = transfer_owned(s, 0);
    CUcontext popped;
    c->api.ctx_pop(&popped);
    if (st != DLC_OK)
      return st;
    c->download_pending = 0;
  }
  c->upload_pending = 1;
  return DLC_OK;
}

/* The body of dlc__cuda_run, with the context current. */
static dlc_status run_entry(dlc_session *s, int32_t ei) {
  struct dlc_cuda_session *c = s->cuda;
  const dlc_program_desc *d = s->desc;
  const dlc_entry_desc *e = &d->entries[ei];
  dlc_status st;
  CUresult r;
  if (c->upload_pending) {
    if ((st = transfer_owned(s, 1)) != DLC_OK)
      return st;
    c->upload_pending = 0;
  }
  for (int32_t i = 0; i < d->n_tensors; i++)
    c->dev_table[i] = is_owned(&d->tensors[i]) ? (void *)(uintptr_t)c->dev[i] : NULL;
  for (int32_t k = 0; k < e->n_inputs + e->n_outputs; k++) {
    int is_input = k < e->n_inputs;
    int32_t t = is_input ? e->inputs[k] : e->outputs[k - e->n_inputs];
    size_t bytes = tensor_bytes(d, t, s->syms);
    if ((st = ensure(&c->api, &c->dev[t], &c->dev_cap[t], bytes, d->tensors[t].name)) != DLC_OK)
      return st;
    c->dev_table[t] = (void *)(uintptr_t)c->dev[t];
    if (is_input && c->device_io)
      c->dev_table[t] = s->table[t]; /* the caller's device memory */
    else if (is_input && bytes > 0 &&
             (r = c->api.memcpy_htod(c->dev[t], s->table[t], bytes)) != 0)
      return cuda_fail(&c->api, r, "copying an input to the device");
  }
  int64_t ws = e->workspace_bytes(s->syms);
  if (ws < 0)
    return dlc__fail(DLC_ERR_INTERNAL,
                     "entry '%s' asked for a workspace of %lld bytes; this is a bug in dlc",
                     e->name, (long long)ws);
  if ((st = ensure(&c->api, &c->workspace, &c->workspace_cap, (size_t)ws, "the workspace")) != DLC_OK)
    return st;
  c->launch_error = 0;
  c->bad_launch = 0;
  /* A train step updates params and state on the device, even if it fails
   * part way. */
  if (e->kind == DLC_ENTRY_TRAIN)
    c->download_pending = 1;
  const void *host = &c->host; /* the launch plan takes a dlc_cuda_host */
  int32_t rc = e->run(c->dev_table, s->syms, (void *)(uintptr_t)c->workspace,
                      (const dlc_host *)host);
  if (c->bad_launch)
    return dlc__fail(DLC_ERR_INTERNAL,
                     "entry '%s' asked for an impossible launch of kernel %d; this "
                     "is a bug in dlc",
                     e->name, (int)c->failed_kernel);
  if (c->launch_error != 0) {
    char what[160];
    snprintf(what, sizeof what, "launching kernel '%s' of entry '%s'",
             s->program->cuda->kernel_names[c->failed_kernel], e->name);
    return cuda_fail(&c->api, c->launch_error, what);
  }
  if (rc != 0)
    return dlc__fail(DLC_ERR_INTERNAL, "entry '%s' failed with code %d; this is a bug in dlc",
                     e->name, (int)rc);
  /* Synchronous copies on the default stream wait for the kernels, so a
   * kernel's fault shows here. With device I/O the caller synchronises. */
  for (int32_t k = 0; !c->device_io && k < e->n_outputs; k++) {
    int32_t t = e->outputs[k];
    size_t bytes = tensor_bytes(d, t, s->syms);
    if (bytes > 0 && (r = c->api.memcpy_dtoh(s->table[t], c->dev[t], bytes)) != 0) {
      char what[160];
      snprintf(what, sizeof what, "running entry '%s'", e->name);
      return cuda_fail(&c->api, r, what);
    }
  }
  return DLC_OK;
}

dlc_status dlc__cuda_run(dlc_session *s, int32_t ei) {
  struct dlc_cuda_session *c = s->cuda;
  CUresult r = c->api.ctx_push(c->ctx);
  if (r != 0)
    return cuda_fail(&c->api, r, "making the context current");
  dlc_status st = run_entry(s, ei);
  CUcontext popped;
  c->api.ctx_pop(&popped);
  return st;
}

dlc_status dlc_session_set_device_io(dlc_session *s, int32_t enabled) {
  if (s == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_set_device_io: session must not be NULL");
  if (s->cuda == NULL)
    return dlc__fail(DLC_ERR_UNAVAILABLE,
                     "device pointers need a session of a program compiled for "
                     "target 'cuda'; this program is for the CPU");
  dlc__session_lock(s);
  s->cuda->device_io = enabled != 0;
  dlc__session_unlock(s);
  return DLC_OK;
}

dlc_status dlc__cuda_input_on_host(const dlc_session *s, const void *data,
                                   size_t bytes, const void **out, void **copy) {
  const struct dlc_cuda_session *c = s->cuda;
  *out = data;
  *copy = NULL;
  if (c == NULL || !c->device_io || bytes == 0)
    return DLC_OK;
  void *host = malloc(bytes);
  if (host == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory reading an input back "
                                            "from the device");
  CUresult r = c->api.ctx_push(c->ctx);
  if (r == 0) {
    r = c->api.memcpy_dtoh(host, (CUdeviceptr)(uintptr_t)data, bytes);
    CUcontext popped;
    c->api.ctx_pop(&popped);
  }
  if (r != 0) {
    free(host);
    return cuda_fail(&c->api, r, "reading an input back from the device");
  }
  *out = *copy = host;
  return DLC_OK;
}

void dlc__cuda_output_views(const dlc_session *s, int32_t ei, dlc_tensor *outputs) {
  const struct dlc_cuda_session *c = s->cuda;
  if (c == NULL || !c->device_io)
    return;
  const dlc_entry_desc *e = &s->desc->entries[ei];
  for (int32_t k = 0; k < e->n_outputs; k++)
    outputs[k].data = (void *)(uintptr_t)c->dev[e->outputs[k]];
}
