/* dlc/runtime.h — the C API of the dlc runtime.
 *
 * Loads a compiled program (a shared library described by dlc/program.h),
 * creates sessions that own its parameters, optimizer state, workspace and
 * outputs, runs its entry points, and reads and writes weights in the
 * safetensors format.
 *
 * Conventions (shaped like IREE's runtime API):
 *  - Objects are opaque handles: dlc_program, dlc_session.
 *  - Every function returns a dlc_status. On failure, dlc_status_message()
 *    gives a message for people, and out-parameters are left untouched.
 *  - Bad input (NULL pointers, wrong shapes, malformed files) is reported as a
 *    status; the runtime never aborts on it, and a failed call leaves the
 *    session as it was.
 *  - Ownership: a create/load function returns a handle the caller owns and
 *    gives back with the matching release function. Release functions accept
 *    NULL. Borrowed pointers (names, descriptors, tensor views) are owned by
 *    the runtime; each function states how long they stay valid.
 *  - Thread-safety: a dlc_program is immutable after loading and may be used
 *    from any number of threads at once, including to create sessions.
 *    Different sessions, of one program or several, run concurrently. Calls
 *    on one session may come from any number of threads: they run one at a
 *    time (a lock per session, as its entries share the workspace, params
 *    and optimizer state); only dlc_session_release must not overlap any
 *    other call on the session. Session memory a call hands out is not
 *    locked: a param view read while another thread trains may show a step
 *    half applied, and the output views of dlc_session_run last only until
 *    the next run of the entry on any thread, so threads sharing a session
 *    run with dlc_session_run_into (outputs in memory of their own) or
 *    order their calls themselves. dlc_status_message() is per thread.
 */
#ifndef DLC_RUNTIME_H
#define DLC_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "dlc/program.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(DLC_BUILDING_RUNTIME) && (defined(__GNUC__) || defined(__clang__))
#define DLC_API __attribute__((visibility("default")))
#else
#define DLC_API
#endif

/* The most dims a tensor may have, in the descriptor and at the API. */
#define DLC_MAX_RANK 8

/* The alignment, in bytes, of every buffer handed to compiled code: the
 * runtime's own, and the caller's memory in the no-malloc functions below. */
#define DLC_ALIGNMENT 64

/* The most threads a session may run on (dlc_session_options.num_threads,
 * $DLC_NUM_THREADS). */
#define DLC_MAX_THREADS 1024

typedef enum dlc_status {
  DLC_OK = 0,
  DLC_ERR_INVALID_ARGUMENT = 1, /* a bad call: NULL, wrong name, dtype or shape */
  DLC_ERR_NOT_FOUND = 2,        /* a named entry, parameter or file is missing */
  DLC_ERR_IO = 3,               /* reading or writing a file failed */
  DLC_ERR_FORMAT = 4,           /* a malformed program or weights file, or one
                                   that does not match the program */
  DLC_ERR_ABI = 5,              /* a program written for another ABI version */
  DLC_ERR_OUT_OF_MEMORY = 6,
  DLC_ERR_UNAVAILABLE = 7,      /* a feature this build or machine lacks */
  DLC_ERR_INTERNAL = 8          /* a compiled entry failed: a bug in dlc */
} dlc_status;

/* The message of the last failed call on the calling thread ("" if none).
 * Valid until the next failing call on this thread. */
DLC_API const char *dlc_status_message(void);

/* "OK", "INVALID_ARGUMENT", ... ("UNKNOWN" for values outside the enum). */
DLC_API const char *dlc_status_name(dlc_status status);

/* A tensor at the API: a pointer to dense row-major data and its shape.
 * dtype is a dlc_dtype; dims[rank..DLC_MAX_RANK) are ignored. */
typedef struct dlc_tensor {
  void *data;
  int32_t dtype;
  int32_t rank;
  int64_t dims[DLC_MAX_RANK];
} dlc_tensor;

/* ---- programs ---------------------------------------------------------- */

typedef struct dlc_program dlc_program;

/* Loads the program library at `path` (dlopen RTLD_NOW|RTLD_LOCAL) and
 * validates its descriptor. Errors: NOT_FOUND (no such file), FORMAT (not a
 * loadable library, no `dlc_program` symbol, or an inconsistent descriptor,
 * e.g. a parameter with a symbolic dim), ABI (another DLC_ABI_VERSION). */
DLC_API dlc_status dlc_program_load(const char *path, dlc_program **out_program);

/* Drops the caller's reference. The library stays loaded while sessions
 * created from the program exist. */
DLC_API void dlc_program_release(dlc_program *program);

/* The validated descriptor, owned by the program; valid until the program
 * and all its sessions are released. */
DLC_API dlc_status dlc_program_descriptor(const dlc_program *program,
                                          const dlc_program_desc **out_desc);

/* Wraps the descriptor of a program linked into the application (the
 * `<name>_program()` function of a static library written by `dlc compile
 * --emit=lib`) as a dlc_program, validating it as dlc_program_load does;
 * `name` is used in messages. Errors: INVALID_ARGUMENT (NULL), FORMAT, ABI
 * (a program compiled for another runtime ABI version), OUT_OF_MEMORY.
 * Release with dlc_program_release. */
DLC_API dlc_status dlc_program_from_descriptor(const dlc_program_desc *desc,
                                               const char *name,
                                               dlc_program **out_program);

/* ---- sessions ---------------------------------------------------------- */

typedef struct dlc_session dlc_session;

typedef struct dlc_session_options {
  uint64_t seed;       /* parameter initialisation seed; default 0 */
  int32_t num_threads; /* threads, 1..DLC_MAX_THREADS; 0 (default) =
                          $DLC_NUM_THREADS if set, else one per core */
} dlc_session_options;

DLC_API dlc_status dlc_session_options_initialize(dlc_session_options *options);

/* Creates a session: allocates every PARAM and STATE tensor (64-byte
 * aligned), initialises the params from options->seed and zeroes the states.
 * `options` may be NULL for the defaults. The session holds a reference to
 * the program. Errors: INVALID_ARGUMENT (num_threads outside
 * 0..DLC_MAX_THREADS, or with 0 a $DLC_NUM_THREADS that is set but not a
 * count in 1..DLC_MAX_THREADS), OUT_OF_MEMORY, UNAVAILABLE (below).
 *
 * A program compiled for the cuda target runs on the first CUDA device: its
 * params and state live in device memory, and the buffers this API shows
 * are their host copies. A param view shows the values as of the call that
 * returned it (ask again after a train step), and what is written through
 * it reaches the device on the next run. Without libcuda.so.1 or a GPU (or
 * for a GPU older than the program's architecture), creation fails with
 * DLC_ERR_UNAVAILABLE. */
DLC_API dlc_status dlc_session_create(dlc_program *program,
                                      const dlc_session_options *options,
                                      dlc_session **out_session);

/* Frees the session and everything it owns (views into it become invalid). */
DLC_API void dlc_session_release(dlc_session *session);

/* Re-initialises every PARAM and STATE by its init rule (a fresh optimizer:
 * zero moments, the program's learning rates). The values of a param depend
 * only on `seed` and its index in the tensor table. */
DLC_API dlc_status dlc_session_init_params(dlc_session *session, uint64_t seed);

/* The number of PARAM tensors, and the i-th of them in tensor-table order:
 * its name (owned by the program) and a view of the session's memory.
 * Views stay valid, at the same address, until the session is released. */
DLC_API dlc_status dlc_session_param_count(const dlc_session *session,
                                           int32_t *out_count);
DLC_API dlc_status dlc_session_param_at(dlc_session *session, int32_t i,
                                        const char **out_name,
                                        dlc_tensor *out_view);

/* The same for the STATE tensors: the optimizer's (named
 * `<train block>.<param>.exp_avg`, `<train block>.step`, `<train block>.lr`
 * ...; see dlc/ops/optim.py) and caches of values derived from params.
 * Writing `<train block>.lr` (f32 or f64, rank 0) sets the learning rate of
 * that block's next steps. */
DLC_API dlc_status dlc_session_state_count(const dlc_session *session,
                                           int32_t *out_count);
DLC_API dlc_status dlc_session_state_at(dlc_session *session, int32_t i,
                                        const char **out_name,
                                        dlc_tensor *out_view);

/* A view of the PARAM named `name` (NOT_FOUND if there is none). */
DLC_API dlc_status dlc_session_param(dlc_session *session, const char *name,
                                     dlc_tensor *out_view);

/* Copies `value` into the PARAM named `name`; dtype and shape must match. */
DLC_API dlc_status dlc_session_set_param(dlc_session *session, const char *name,
                                         const dlc_tensor *value);

/* Runs the entry point named `entry`.
 *
 * Inputs are matched by name: input_names[i] names inputs[i]; every input of
 * the entry must be given exactly once and no other. Each input's dtype, rank
 * and fixed dims must match the program; its symbolic dims bind the program's
 * symbols (each >= 1, and equal wherever a symbol appears). Input data must
 * not overlap this entry's outputs from an earlier run (copy it first).
 *
 * `outputs` has room for `n_outputs` tensors, at least the entry's number of
 * outputs; outputs[k] receives the entry's k-th output (descriptor order) as
 * a view of session-owned memory, valid until the next run of the same entry
 * (from any thread) or the release of the session.
 *
 * The values of i32 inputs the program uses as indices must lie in their
 * ranges (dlc_tensor_desc.bounded: tokens below the vocabulary, class labels
 * below the class count, sequence lengths in [1, time]).
 *
 * Everything is checked before anything is written. Errors: NOT_FOUND (no
 * such entry), INVALID_ARGUMENT (bad inputs, or an index input out of its
 * range: the message names the input, the element, its value and the
 * range), OUT_OF_MEMORY, INTERNAL (the compiled code returned nonzero;
 * params may then be partly updated). */
DLC_API dlc_status dlc_session_run(dlc_session *session, const char *entry,
                                   int32_t n_inputs,
                                   const char *const *input_names,
                                   const dlc_tensor *inputs, int32_t n_outputs,
                                   dlc_tensor *outputs);

/* dlc_session_run, writing each output into memory the caller owns:
 * outputs[k] gives the k-th output's data (DLC_ALIGNMENT-aligned), dtype,
 * rank and dims, which must be those these inputs make, and must not overlap
 * an input or another output. No copy out of session memory is then needed.
 * Errors: those of dlc_session_run; INVALID_ARGUMENT (an output tensor that
 * does not match); UNAVAILABLE for a session of a cuda program. */
DLC_API dlc_status dlc_session_run_into(dlc_session *session, const char *entry,
                                        int32_t n_inputs,
                                        const char *const *input_names,
                                        const dlc_tensor *inputs, int32_t n_outputs,
                                        const dlc_tensor *outputs);

/* For a session of a program compiled for the cuda target: with `enabled`
 * nonzero, dlc_session_run takes each input's data as a device pointer (a
 * CUdeviceptr of the first device, cast to void *) and gives outputs whose
 * data are device pointers owned by the session, valid until the next run
 * of the same entry: no copies between host and device. Off by default.
 * Errors: UNAVAILABLE for a session of a CPU program. */
DLC_API dlc_status dlc_session_set_device_io(dlc_session *session, int32_t enabled);

/* ---- weights (safetensors) --------------------------------------------- */

/* Writes every PARAM to `path` as safetensors (F32/F64/I32, little-endian),
 * through a temporary file renamed into place, so a failed save leaves an
 * existing file intact. Errors: IO. */
DLC_API dlc_status dlc_session_save(const dlc_session *session, const char *path);

/* dlc_session_save, with every STATE too (the optimizer's moments, step
 * counts and learning rates): dlc_session_load of the file then resumes
 * training exactly where it was saved. */
DLC_API dlc_status dlc_session_save_checkpoint(const dlc_session *session,
                                               const char *path);

/* Reads every PARAM from the safetensors file at `path`, and the STATEs a
 * checkpoint holds. The file must hold exactly the program's params (and
 * any of its states), each with its dtype and shape; it is read
 * into temporary memory and committed only once all of it is valid, so a
 * failed load leaves the params unchanged. Errors: NOT_FOUND (no such file),
 * IO, FORMAT (a malformed file or one that does not match the program). */
DLC_API dlc_status dlc_session_load(dlc_session *session, const char *path);

/* dlc_session_load for a file that may lack some params (they keep their
 * values) and hold tensors the program does not have (ignored, though the
 * file must still be well formed). The params it holds must have the
 * program's dtypes and shapes; the load is all-or-nothing as before. On
 * success, unless `found` is NULL, found[i] is 1 for each tensor i of the
 * descriptor's table loaded from the file, 0 for every other; `n_found` is
 * its length, at least the table's (else INVALID_ARGUMENT). Errors: those of
 * dlc_session_load. */
DLC_API dlc_status dlc_session_load_partial(dlc_session *session, const char *path,
                                            int32_t n_found, uint8_t *found);

/* ---- memory the caller owns (no-malloc use) ---------------------------- */
/* Without a session: the caller holds the program's tensors in its own
 * memory and calls the descriptor's entries itself (see program.h, and the
 * header `dlc compile --emit=lib` writes). `tensors` has one pointer per
 * entry of the descriptor's tensor table; these functions use only the
 * PARAM (and, for init, STATE) pointers, which must be non-NULL and
 * DLC_ALIGNMENT-aligned. The descriptor is validated on every call, as
 * dlc_program_load does (errors FORMAT, ABI). */

/* Initialises every PARAM by its init rule and zeroes every STATE, with the
 * values dlc_session_init_params gives for `seed`. Allocates nothing. */
DLC_API dlc_status dlc_tensors_init(const dlc_program_desc *desc,
                                    void *const *tensors, uint64_t seed);

/* dlc_session_load and dlc_session_save on the caller's PARAM memory: the
 * same checks, errors and all-or-nothing commit. Loading allocates
 * temporary memory while it reads. */
DLC_API dlc_status dlc_tensors_load(const dlc_program_desc *desc,
                                    void *const *tensors, const char *path);
DLC_API dlc_status dlc_tensors_save(const dlc_program_desc *desc,
                                    void *const *tensors, const char *path);

/* dlc_tensors_load from a safetensors file already in memory (`size` bytes
 * at `bytes`, e.g. linked into the application); messages name it
 * "(memory)". */
DLC_API dlc_status dlc_tensors_load_memory(const dlc_program_desc *desc,
                                           void *const *tensors,
                                           const void *bytes, size_t size);

#ifdef __cplusplus
}
#endif
#endif /* DLC_RUNTIME_H */
