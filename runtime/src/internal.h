/* internal.h — what the runtime's source files share: the program and
 * session structs, error reporting, sizes and aligned memory. Not installed. */
#ifndef DLC_INTERNAL_H
#define DLC_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "dlc/runtime.h"

#if defined(__GNUC__) || defined(__clang__)
#define DLC_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define DLC_PRINTF(f, a)
#endif

/* Buffers handed to compiled code are aligned for the widest vector loads. */
#define DLC_ALIGN DLC_ALIGNMENT

struct dlc_program {
  void *handle; /* from dlopen; NULL for a program linked into the application */
  const dlc_program_desc *desc;
  const dlc_cuda_program_desc *cuda; /* NULL for a CPU program */
  int32_t refs; /* the caller's reference plus one per session; atomic */
};

typedef struct dlc_entry_state {
  void **out_data;     /* one session-owned buffer per output */
  size_t *out_cap;     /* their sizes in bytes */
  void **pending;      /* scratch: grown buffers not yet swapped in */
  size_t *pending_cap;
} dlc_entry_state;

/* The thread pool (pool.c) behind dlc_host.parallel_for. */
typedef struct dlc_pool dlc_pool;
/* The thread count for a session: `requested` if > 0, else
 * $DLC_NUM_THREADS, else one per core (at most DLC_MAX_THREADS).
 * INVALID_ARGUMENT for a $DLC_NUM_THREADS that is not such a count. */
dlc_status dlc__pool_threads(int32_t requested, int32_t *out_threads);
/* NULL on out of memory. Threads start on the first parallel loop. */
dlc_pool *dlc__pool_create(int32_t n_threads);
void dlc__pool_release(dlc_pool *pool);
/* dlc_host.parallel_for: fn over [0, n) in chunks of >= grain iterations;
 * runs inline when the pool is NULL, has one thread, or is already busy. */
void dlc__pool_parallel_for(void *pool, int64_t n, int64_t grain, dlc_task_fn fn,
                            void *closure);

struct dlc_session {
  /* Held by every call that reads or writes the session's memory (params,
   * state, workspace, outputs, the scratch below): calls on one session
   * from several threads run one at a time. */
  pthread_mutex_t lock;
  dlc_program *program;
  const dlc_program_desc *desc;
  int32_t num_threads;
  dlc_pool *pool;
  dlc_host host;        /* handed to compiled code: the pool's parallel_for */
  void **data;          /* per tensor: the PARAM/STATE buffer, else NULL */
  size_t *bytes;        /* per tensor: the PARAM/STATE size in bytes */
  dlc_entry_state *entries;
  void *workspace;
  size_t workspace_cap;
  void **table;         /* scratch: the tensor table passed to an entry */
  int64_t *syms;        /* scratch: symbol values */
  int32_t *sym_input;   /* scratch: the input position that bound each symbol */
  int32_t *sym_dim;     /* scratch: and which of its dims */
  int32_t *given;       /* scratch: per entry input, its position in the call */
  int64_t (*out_dims)[DLC_MAX_RANK]; /* scratch: per entry output, its dims */
  struct dlc_cuda_session *cuda; /* the device side of a CUDA program's session */
};

/* The session's lock (struct dlc_session); const sessions too, as saving
 * reads memory a concurrent run writes. */
void dlc__session_lock(const dlc_session *session);
void dlc__session_unlock(const dlc_session *session);

/* Records a message for dlc_status_message() and returns `status`. */
dlc_status dlc__fail(dlc_status status, const char *fmt, ...) DLC_PRINTF(2, 3);

/* A bounded string builder for messages; output past its end is dropped and
 * marked with "...". */
typedef struct dlc_sb {
  char buf[1024];
  size_t len;
} dlc_sb;
void dlc__sb_init(dlc_sb *sb);
void dlc__sb_printf(dlc_sb *sb, const char *fmt, ...) DLC_PRINTF(2, 3);
/* "[batch, 2]": a declared shape, symbols by name. */
void dlc__sb_decl_shape(dlc_sb *sb, const dlc_program_desc *desc,
                        const dlc_tensor_desc *t);
/* "[16, 3]" */
void dlc__sb_shape(dlc_sb *sb, int32_t rank, const int64_t *dims);

size_t dlc__dtype_size(int32_t dtype);
const char *dlc__dtype_name(int32_t dtype); /* "f32", "f64", "i32" */

/* Element count of a tensor with fixed dims (validated: no overflow). */
int64_t dlc__fixed_numel(const dlc_tensor_desc *t);

/* a * b into *out; returns 0 on overflow past INT64_MAX. Operands >= 0. */
int dlc__mul_ok(int64_t a, int64_t b, int64_t *out);

/* 64-byte aligned memory of at least `bytes` (>= 1 allocated); NULL on
 * failure. Free with dlc__aligned_free. */
void *dlc__aligned_alloc(size_t bytes);
void dlc__aligned_free(void *p);

/* Fills every PARAM and STATE tensor of `data` (one pointer per tensor-table
 * entry) by its init rule from (seed, index); zeroes the states. */
void dlc__init_tensors(const dlc_program_desc *desc, void *const *data,
                       uint64_t seed);

/* Validates a descriptor; `name` (a path, or the name of a linked-in
 * program) is used in messages. Errors: FORMAT, ABI. */
dlc_status dlc__check_desc(const char *name, const dlc_program_desc *desc);

/* Takes a reference for a session; dlc_program_release drops it. */
void dlc__program_retain(dlc_program *program);

/* Index of the tensor of `role` named `name`, or -1. */
int32_t dlc__find_tensor(const dlc_program_desc *desc, int32_t role, const char *name);
#define dlc__find_param(desc, name) dlc__find_tensor(desc, DLC_ROLE_PARAM, name)
#define dlc__find_state(desc, name) dlc__find_tensor(desc, DLC_ROLE_STATE, name)

/* Checks a descriptor and a caller's tensor table for `fn`: every tensor of
 * role <= max_role (DLC_ROLE_PARAM: the params; DLC_ROLE_STATE: params and
 * states) has memory, DLC_ALIGNMENT-aligned. */
dlc_status dlc__check_table(const char *fn, const dlc_program_desc *desc,
                            void *const *tensors, int32_t max_role);

/* CUDA sessions (cuda.c). The session's host buffers (data, outputs) stay
 * the API's view; params and state live on the device, copied on demand. */
/* Opens libcuda, loads the program's PTX and allocates params and state on
 * the device; UNAVAILABLE without a driver or a GPU. */
dlc_status dlc__cuda_session_create(dlc_session *session);
void dlc__cuda_session_release(dlc_session *session);
/* Before the host reads or writes params or state: copies them back from
 * the device if a run changed them, and marks them to be uploaded before the
 * next run (the caller may write them). No-op for CPU sessions. */
dlc_status dlc__cuda_host_access(const dlc_session *session);
/* Runs entry `ei`: s->table holds host pointers and s->syms the bound sizes;
 * inputs go to the device, outputs come back into the table's buffers. */
dlc_status dlc__cuda_run(dlc_session *session, int32_t ei);
/* Where the host can read `bytes` bytes of a run's input `data`: `data`
 * itself, or with device I/O on a copy of the device memory it points to,
 * in *copy, which the caller frees (NULL otherwise). */
dlc_status dlc__cuda_input_on_host(const dlc_session *session, const void *data,
                                   size_t bytes, const void **out, void **copy);
/* With device I/O on (dlc_session_set_device_io), points the outputs of a
 * run of entry `ei` at their device buffers. No-op otherwise. */
void dlc__cuda_output_views(const dlc_session *session, int32_t ei,
                            dlc_tensor *outputs);

#endif /* DLC_INTERNAL_H */
