/* fake_libcuda.c — a stand-in for libcuda.so.1 that runs a program's kernels
 * on the CPU, so that the cuda target's runtime path (runtime/src/cuda.c and
 * the compiled launch plans) is exercised on machines without a GPU.
 *
 * "Device" memory is host memory. cuModuleLoadDataEx does not read the PTX:
 * it opens $DLC_FAKE_CUDA_DIR/<FNV-1a hash of the PTX text>.so, the same
 * kernels compiled for the host by tests/cuda/emulator.py, in which the PTX
 * special registers read `dlc_emu_regs` {tid, ntid, ctaid, nctaid}.
 * cuLaunchKernel runs the blocks one after another, and each thread through
 * the kernel's `<name>_emu(void **params)` wrapper. Threads of a kernel with
 * barriers (`<name>_emu_sync` is 1) run as coroutines: each runs until it
 * finishes or reaches a barrier (bar.sync calls back into fake_barrier), and
 * a round resumes every thread not done, so a round is one barrier phase.
 * A coroutine is entered once with swapcontext, then switched with
 * sigsetjmp/siglongjmp without saving signal masks (no system calls); build
 * with -U_FORTIFY_SOURCE, whose longjmp check rejects switching stacks.
 * Not a model of races. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <setjmp.h>
#include <ucontext.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef void (*kernel_fn)(void **params);
typedef struct fake_module { void *handle; int32_t *regs; } fake_module;
typedef struct fake_function { kernel_fn fn; int32_t *regs; int sync; } fake_function;

#define MAX_THREADS 1024
#define STACK_BYTES (256 * 1024)
static ucontext_t scheduler, threads[MAX_THREADS];
static sigjmp_buf scheduler_jmp, thread_jmp[MAX_THREADS];
static char *stacks;
static int done[MAX_THREADS], started[MAX_THREADS];
static int current;
static fake_function *running;
static void **running_params;

static void fake_barrier(void) {
  if (sigsetjmp(thread_jmp[current], 0) == 0)
    siglongjmp(scheduler_jmp, 1);
}

static void thread_main(void) {
  running->fn(running_params);
  done[current] = 1;
  siglongjmp(scheduler_jmp, 1);
}

#define API __attribute__((visibility("default")))

API CUresult cuInit(unsigned flags) { (void)flags; return 0; }
API CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
API CUresult cuDeviceGet(int *d, int i) { *d = i; return 0; }
API CUresult cuDeviceGetName(char *name, int n, int d) {
  (void)d;
  snprintf(name, (size_t)n, "dlc CPU emulator");
  return 0;
}
API CUresult cuDeviceGetAttribute(int *v, int attr, int d) {
  (void)d;
  *v = attr == 75 ? 9 : 0; /* compute capability 9.0 */
  return 0;
}
static int context;
API CUresult cuDevicePrimaryCtxRetain(void **ctx, int d) { (void)d; *ctx = &context; return 0; }
API CUresult cuDevicePrimaryCtxRelease_v2(int d) { (void)d; return 0; }
API CUresult cuCtxPushCurrent_v2(void *ctx) { (void)ctx; return 0; }
API CUresult cuCtxPopCurrent_v2(void **ctx) { *ctx = &context; return 0; }
API CUresult cuGetErrorName(CUresult r, const char **s) {
  *s = r == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : r == 218 ? "CUDA_ERROR_INVALID_PTX" : "CUDA_ERROR_UNKNOWN";
  return 0;
}
API CUresult cuGetErrorString(CUresult r, const char **s) { (void)r; *s = "emulated error"; return 0; }

API CUresult cuModuleLoadDataEx(fake_module **out, const void *image, unsigned n,
                                int *options, void **values) {
  (void)n; (void)options; (void)values;
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char *p = image; *p; p++)
    h = (h ^ *p) * 1099511628211ull;
  const char *dir = getenv("DLC_FAKE_CUDA_DIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/%016llx.so", dir ? dir : ".", (unsigned long long)h);
  void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    fprintf(stderr, "fake libcuda: %s\n", dlerror());
    return 218;
  }
  fake_module *m = malloc(sizeof *m);
  m->handle = handle;
  m->regs = (int32_t *)dlsym(handle, "dlc_emu_regs");
  void (**barrier)(void) = (void (**)(void))dlsym(handle, "dlc_emu_barrier_fn");
  if (m->regs == NULL || barrier == NULL)
    return 218;
  *barrier = fake_barrier;
  *out = m;
  return 0;
}
API CUresult cuModuleUnload(fake_module *m) {
  dlclose(m->handle);
  free(m);
  return 0;
}
/* Functions live as long as the process: a test harness, not a driver. */
API CUresult cuModuleGetFunction(fake_function **out, fake_module *m, const char *name) {
  char sym[512];
  snprintf(sym, sizeof sym, "%s_emu", name);
  void *p = dlsym(m->handle, sym);
  if (p == NULL)
    return 500; /* CUDA_ERROR_NOT_FOUND */
  fake_function *f = malloc(sizeof *f);
  memcpy(&f->fn, &p, sizeof p);
  f->regs = m->regs;
  snprintf(sym, sizeof sym, "%s_emu_sync", name);
  const int *sync = (const int *)dlsym(m->handle, sym);
  f->sync = sync != NULL && *sync;
  *out = f;
  return 0;
}
API CUresult cuMemAlloc_v2(unsigned long long *ptr, size_t bytes) {
  void *p = calloc(1, bytes);
  if (p == NULL)
    return 2;
  *ptr = (unsigned long long)(uintptr_t)p;
  return 0;
}
API CUresult cuMemFree_v2(unsigned long long ptr) { free((void *)(uintptr_t)ptr); return 0; }
API CUresult cuMemcpyHtoD_v2(unsigned long long dst, const void *src, size_t n) {
  memcpy((void *)(uintptr_t)dst, src, n);
  return 0;
}
API CUresult cuMemcpyDtoH_v2(void *dst, unsigned long long src, size_t n) {
  memcpy(dst, (const void *)(uintptr_t)src, n);
  return 0;
}
static void set_registers(fake_function *f, unsigned t, unsigned bx, unsigned b, unsigned gx) {
  f->regs[0] = (int32_t)t;
  f->regs[1] = (int32_t)bx;
  f->regs[2] = (int32_t)b;
  f->regs[3] = (int32_t)gx;
}

/* Every thread of block b to completion, phase by phase. */
static void run_block(fake_function *f, unsigned b, unsigned gx, unsigned bx) {
  if (!f->sync) {
    for (unsigned t = 0; t < bx; t++) {
      set_registers(f, t, bx, b, gx);
      f->fn(running_params);
    }
    return;
  }
  for (unsigned t = 0; t < bx; t++) {
    getcontext(&threads[t]);
    threads[t].uc_stack.ss_sp = stacks + (size_t)t * STACK_BYTES;
    threads[t].uc_stack.ss_size = STACK_BYTES;
    threads[t].uc_link = NULL; /* thread_main never returns */
    makecontext(&threads[t], thread_main, 0);
    done[t] = started[t] = 0;
  }
  /* volatile: live across sigsetjmp */
  for (volatile unsigned left = bx; left > 0;)
    for (volatile unsigned t = 0; t < bx; t++) {
      if (done[t])
        continue;
      current = (int)t;
      set_registers(f, t, bx, b, gx);
      if (sigsetjmp(scheduler_jmp, 0) == 0) {
        if (started[t])
          siglongjmp(thread_jmp[t], 1);
        started[t] = 1;
        swapcontext(&scheduler, &threads[t]);
      }
      left -= (unsigned)done[t];
    }
}

API CUresult cuLaunchKernel(fake_function *f, unsigned gx, unsigned gy, unsigned gz,
                            unsigned bx, unsigned by, unsigned bz, unsigned shared,
                            void *stream, void **params, void **extra) {
  (void)stream;
  if (gy != 1 || gz != 1 || by != 1 || bz != 1 || shared != 0 || extra != NULL || bx > 1024)
    return 1; /* CUDA_ERROR_INVALID_VALUE: the plans use x only */
  if (stacks == NULL && (stacks = malloc((size_t)MAX_THREADS * STACK_BYTES)) == NULL)
    return 2;
  running = f;
  running_params = params;
  for (unsigned b = 0; b < gx; b++)
    run_block(f, b, gx, bx);
  return 0;
}
