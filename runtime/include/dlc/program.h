/* dlc/program.h — the ABI between a compiled dlc program and the runtime.
 *
 * A compiled program (a shared library written by `dlc compile`) exports one
 * function, `dlc_program`, returning a descriptor of everything the runtime
 * needs: the symbolic sizes, the tensor table, and the entry points. Nothing
 * about a particular network is hard-coded in the runtime; it reads this.
 *
 * The descriptor is immutable, static data owned by the program library and
 * valid while the library is loaded. Bump DLC_ABI_VERSION on any change here.
 */
#ifndef DLC_PROGRAM_H
#define DLC_PROGRAM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DLC_ABI_VERSION 4

typedef enum dlc_dtype { DLC_F32 = 0, DLC_F64 = 1, DLC_I32 = 2 } dlc_dtype;

typedef enum dlc_role {
  DLC_ROLE_PARAM = 0,  /* trainable, owned by the session, saved in weights files */
  DLC_ROLE_STATE = 1,  /* optimizer state (momenta, Adam moments, step count,
                          learning rate) and caches of values derived from
                          params (Winograd's transformed filters): owned by
                          the session, initialised by their rule (zeros, the
                          learning rate its value), saved in checkpoints only */
  DLC_ROLE_INPUT = 2,  /* given by the caller on each call of an entry */
  DLC_ROLE_OUTPUT = 3  /* produced by an entry on each call */
} dlc_role;

typedef enum dlc_init_kind {
  DLC_INIT_ZEROS = 0,
  DLC_INIT_ONES = 1,
  DLC_INIT_UNIFORM = 2, /* U(init_a, init_b) */
  DLC_INIT_NORMAL = 3,  /* N(mean = init_a, std = init_b) */
  DLC_INIT_CONSTANT = 4 /* init_a */
} dlc_init_kind;

/* A dim >= 0 is a fixed size; a dim < 0 names symbol number (-dim - 1).
 *
 * An i32 INPUT that the program uses as indices (tokens, class labels,
 * sequence lengths) is `bounded`: an entry is run only if every element v
 * satisfies lo <= v <= hi + (hi_sym >= 0 ? the value of symbol hi_sym : 0)
 * or, when has_extra, v == extra (tokens below the vocabulary: [0, vocab - 1];
 * lengths: [1, time] with hi = 0 and hi_sym the symbol `time`; labels of a
 * loss with ignore_index=-100: [0, classes - 1] or -100). Zero (unbounded)
 * for other tensors. */
typedef struct dlc_tensor_desc {
  const char *name;
  int32_t role;  /* dlc_role */
  int32_t dtype; /* dlc_dtype */
  int32_t rank;
  int32_t init;  /* dlc_init_kind; used for PARAM and STATE */
  const int64_t *dims;
  double init_a;
  double init_b;
  int32_t bounded;
  int32_t hi_sym; /* a symbol number, or -1 */
  int64_t lo;
  int64_t hi;
  int32_t has_extra;
  int64_t extra;
} dlc_tensor_desc;

/* A chunk of a parallel loop: iterations [begin, end) of the loop whose
 * captured values are in `closure`. */
typedef void (*dlc_task_fn)(void *closure, int64_t begin, int64_t end);

/* What the host (the runtime, or an embedding application) offers compiled
 * code. Compiled code calls nothing else, so a program library has no
 * undefined symbols beyond libc/libm. */
typedef struct dlc_host {
  void *pool;
  /* Runs fn over [0, n) in chunks of at least `grain` iterations, possibly on
   * several threads, and returns when every chunk is done. NULL: the program
   * runs its parallel loops serially on the calling thread. */
  void (*parallel_for)(void *pool, int64_t n, int64_t grain, dlc_task_fn fn,
                       void *closure);
} dlc_host;

/* `tensors` has one pointer per entry of the tensor table (NULL for tensors
 * the entry does not use); `syms` holds the value of every symbol, bound by
 * the runtime from the inputs' shapes; `workspace` has at least
 * workspace_bytes(syms) bytes, 64-byte aligned; `host` may be NULL (serial).
 * Returns 0 on success. */
typedef int32_t (*dlc_entry_fn)(void *const *tensors, const int64_t *syms,
                                void *workspace, const dlc_host *host);
typedef int64_t (*dlc_workspace_fn)(const int64_t *syms);

typedef enum dlc_entry_kind {
  DLC_ENTRY_INFER = 0, /* a model: inputs -> outputs */
  DLC_ENTRY_TRAIN = 1, /* a train block: one optimizer step, outputs the loss before it */
  DLC_ENTRY_GRADS = 2  /* a train block without the update: outputs the loss and
                          one gradient per updated parameter, named as the parameter */
} dlc_entry_kind;

typedef struct dlc_entry_desc {
  const char *name;
  int32_t kind; /* dlc_entry_kind */
  int32_t n_inputs;
  const int32_t *inputs;  /* tensor-table indices, in declaration order */
  int32_t n_outputs;
  const int32_t *outputs; /* tensor-table indices */
  dlc_entry_fn run;
  dlc_workspace_fn workspace_bytes;
} dlc_entry_desc;

typedef struct dlc_program_desc {
  int32_t abi_version; /* DLC_ABI_VERSION of the compiler that wrote it */
  int32_t n_syms;
  const char *const *sym_names;
  int32_t n_tensors;
  const dlc_tensor_desc *tensors;
  int32_t n_entries;
  const dlc_entry_desc *entries;
} dlc_program_desc;

/* The one symbol a program library exports. */
typedef const dlc_program_desc *(*dlc_program_fn)(void);
#define DLC_PROGRAM_SYMBOL "dlc_program"

/* ---- CUDA programs --------------------------------------------------------
 * A program compiled for the cuda target also exports DLC_CUDA_SYMBOL. Its
 * kernels are PTX text; its descriptor is the same, but each entry's `run`
 * is the entry's launch plan: it must be called with device pointers in
 * `tensors` (one per tensor the entry uses), a device `workspace` of
 * workspace_bytes(syms) bytes, and, in place of the dlc_host, a
 * dlc_cuda_host through which it launches the kernels in order on one
 * stream. It returns the first nonzero status of `launch`, or 0. */
typedef struct dlc_cuda_host {
  void *ctx;
  /* Launches kernel number `kernel` (an index into kernel_names) on `grid`
   * blocks of `block` threads (x dimension only), with cuLaunchKernel-style
   * `params` (pointers to each argument). Returns 0 on success. */
  int32_t (*launch)(void *ctx, int32_t kernel, int64_t grid, int32_t block,
                    void **params);
} dlc_cuda_host;

typedef struct dlc_cuda_program_desc {
  const char *ptx;  /* NUL-terminated PTX module text */
  const char *arch; /* the architecture it was compiled for, e.g. "sm_80" */
  int32_t n_kernels;
  const char *const *kernel_names; /* entry names of the PTX module */
} dlc_cuda_program_desc;

typedef const dlc_cuda_program_desc *(*dlc_cuda_program_fn)(void);
#define DLC_CUDA_SYMBOL "dlc_cuda_program"

#ifdef __cplusplus
}
#endif
#endif /* DLC_PROGRAM_H */
