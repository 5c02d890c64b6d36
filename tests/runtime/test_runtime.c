/* C-level tests of the runtime API, run by CTest:
 *   test_runtime <fake_program.so> <fake_program_badabi.so> <scratch dir>
 * They cover what Python cannot reach: NULL handles and pointers everywhere,
 * and the API used without the bindings. */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlc/runtime.h"

#include "../check.h"

static dlc_tensor tensor2(float *data, int64_t d0, int64_t d1) {
  dlc_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = DLC_F32;
  t.rank = 2;
  t.dims[0] = d0;
  t.dims[1] = d1;
  return t;
}

static void test_nulls(dlc_program *p, dlc_session *s) {
  dlc_program *po = NULL;
  dlc_session *so = NULL;
  const dlc_program_desc *d = NULL;
  dlc_tensor view;
  const char *name;
  int32_t n;
  dlc_session_options opts;
  CHECK_ERR(dlc_program_load(NULL, &po), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_program_load("x.so", NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_program_descriptor(NULL, &d), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_program_descriptor(p, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_options_initialize(NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_create(NULL, NULL, &so), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_create(p, NULL, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  dlc_session_options_initialize(&opts);
  opts.num_threads = -2;
  CHECK_ERR(dlc_session_create(p, &opts, &so), DLC_ERR_INVALID_ARGUMENT, "num_threads");
  opts.num_threads = DLC_MAX_THREADS + 1;
  CHECK_ERR(dlc_session_create(p, &opts, &so), DLC_ERR_INVALID_ARGUMENT,
            "num_threads is 1025; use 0 for one per core, or a count from 1 to 1024");
  CHECK(so == NULL);
  CHECK_ERR(dlc_session_init_params(NULL, 1), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_param_count(NULL, &n), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_param_count(s, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_param_at(NULL, 0, &name, &view), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_param_at(s, 0, NULL, &view), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_param_at(s, 0, &name, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_param_at(s, 99, &name, &view), DLC_ERR_INVALID_ARGUMENT,
            "out of range");
  CHECK_ERR(dlc_session_param_at(s, -1, &name, &view), DLC_ERR_INVALID_ARGUMENT,
            "out of range");
  CHECK_ERR(dlc_session_param(NULL, "W", &view), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_param(s, NULL, &view), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_param(s, "W", NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_set_param(NULL, "W", &view), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_set_param(s, NULL, &view), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_set_param(s, "W", NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_run(NULL, "model", 0, NULL, NULL, 0, NULL),
            DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_run(s, NULL, 0, NULL, NULL, 0, NULL),
            DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_run(s, "model", 1, NULL, NULL, 1, &view),
            DLC_ERR_INVALID_ARGUMENT, "NULL");
  const char *names[] = {NULL};
  float x[3] = {0};
  dlc_tensor in = tensor2(x, 1, 3);
  CHECK_ERR(dlc_session_run(s, "model", 1, names, &in, 1, &view),
            DLC_ERR_INVALID_ARGUMENT, "NULL name");
  CHECK_ERR(dlc_session_run(s, "model", 1, names, &in, 0, NULL),
            DLC_ERR_INVALID_ARGUMENT, "has 1 outputs");
  CHECK_ERR(dlc_session_save(NULL, "w"), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_save(s, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_load(NULL, "w"), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_load(s, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_load_partial(NULL, "w", 0, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_session_load_partial(s, NULL, 0, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  dlc_program_release(NULL);
  dlc_session_release(NULL);
}

static void test_run(dlc_session *s) {
  dlc_tensor w;
  CHECK(dlc_session_param(s, "W", &w) == DLC_OK);
  CHECK(w.rank == 2 && w.dims[0] == 2 && w.dims[1] == 3 && w.dtype == DLC_F32);
  float *wd = (float *)w.data;
  for (int i = 0; i < 6; i++)
    CHECK(wd[i] >= -0.5f && wd[i] < 0.5f);

  float x[4 * 3];
  for (int i = 0; i < 12; i++)
    x[i] = (float)i * 0.25f;
  const char *names[] = {"x"};
  dlc_tensor in = tensor2(x, 4, 3), out;
  CHECK(dlc_session_run(s, "model", 1, names, &in, 1, &out) == DLC_OK);
  CHECK(out.rank == 2 && out.dims[0] == 4 && out.dims[1] == 2);
  const float *y = (const float *)out.data;
  for (int i = 0; i < 4; i++)
    for (int o = 0; o < 2; o++) {
      float want = 0; /* b starts at zero */
      for (int k = 0; k < 3; k++)
        want += x[i * 3 + k] * wd[o * 3 + k];
      CHECK(fabsf(y[i * 2 + o] - want) < 1e-5f);
    }

  in.dims[1] = 4;
  CHECK_ERR(dlc_session_run(s, "model", 1, names, &in, 1, &out),
            DLC_ERR_INVALID_ARGUMENT,
            "input 'x' of entry 'model': dim 1 is 4 but the program declares [batch, 3]");
  in.dims[1] = 3;
  CHECK_ERR(dlc_session_run(s, "modle", 1, names, &in, 1, &out), DLC_ERR_NOT_FOUND,
            "entry 'modle' not found; entries are: model, fit, fit.grads, boom, pick");
  /* The previous output stays valid after a failed call. */
  CHECK(out.data == y);
  CHECK_ERR(dlc_session_run(s, "model", 1, names, (const dlc_tensor *)&out, 1, &out),
            DLC_ERR_INVALID_ARGUMENT, "dim 1 is 2");
  CHECK_ERR(dlc_session_run(s, "boom", 1, names, &in, 0, NULL), DLC_ERR_INTERNAL,
            "entry 'boom' failed with code 7");
  const char *wrong[] = {"y"}, *twice[] = {"x", "x"};
  dlc_tensor two_in[2] = {in, in};
  CHECK_ERR(dlc_session_run(s, "model", 1, wrong, &in, 1, &out), DLC_ERR_INVALID_ARGUMENT,
            "entry 'model' has no input 'y'; its inputs are: x");
  CHECK_ERR(dlc_session_run(s, "model", 2, twice, two_in, 1, &out),
            DLC_ERR_INVALID_ARGUMENT, "input 'x' of entry 'model' is given twice");
  CHECK_ERR(dlc_session_run(s, "model", 0, NULL, NULL, 1, &out), DLC_ERR_INVALID_ARGUMENT,
            "entry 'model' needs input 'x', which is missing");
  in.dtype = DLC_F64;
  CHECK_ERR(dlc_session_run(s, "model", 1, names, &in, 1, &out), DLC_ERR_INVALID_ARGUMENT,
            "dtype is f64 but the program declares f32");
  in.dtype = DLC_F32;

  /* Into the caller's memory: the same numbers; a tensor that does not fit
   * (shape, alignment, no data, over an input) is refused, nothing written. */
  _Alignas(64) float into[4 * 2 + 16];
  dlc_tensor dst = tensor2(into, 4, 2);
  CHECK(dlc_session_run_into(s, "model", 1, names, &in, 1, &dst) == DLC_OK);
  for (int i = 0; i < 8; i++)
    CHECK(into[i] == y[i]);
  into[0] = -1.0f;
  dst.dims[0] = 3;
  CHECK_ERR(dlc_session_run_into(s, "model", 1, names, &in, 1, &dst),
            DLC_ERR_INVALID_ARGUMENT, "another dtype, rank or shape");
  dst = tensor2(into + 1, 4, 2);
  CHECK_ERR(dlc_session_run_into(s, "model", 1, names, &in, 1, &dst),
            DLC_ERR_INVALID_ARGUMENT, "aligned to 64 bytes");
  dst = tensor2(NULL, 4, 2);
  CHECK_ERR(dlc_session_run_into(s, "model", 1, names, &in, 1, &dst),
            DLC_ERR_INVALID_ARGUMENT, "has no data");
  _Alignas(64) float shared[4 * 3];
  memcpy(shared, x, sizeof x);
  dlc_tensor over_in = tensor2(shared, 4, 3);
  dst = tensor2(shared, 4, 2);
  CHECK_ERR(dlc_session_run_into(s, "model", 1, names, &over_in, 1, &dst),
            DLC_ERR_INVALID_ARGUMENT, "overlaps input 'x'");
  CHECK(into[0] == -1.0f);
  CHECK_ERR(dlc_session_run_into(NULL, "model", 1, names, &in, 1, &dst),
            DLC_ERR_INVALID_ARGUMENT, "dlc_session_run_into: session and entry");

  float t[4 * 2] = {0};
  const char *fit_names[] = {"t", "x"};
  dlc_tensor fit_in[2] = {tensor2(t, 5, 2), tensor2(x, 4, 3)};
  dlc_tensor loss;
  CHECK_ERR(dlc_session_run(s, "fit", 2, fit_names, fit_in, 1, &loss),
            DLC_ERR_INVALID_ARGUMENT,
            "entry 'fit': symbol 'batch' is 4 from dim 0 of input 'x', but 5 from "
            "dim 0 of input 't'");
  fit_in[0].dims[0] = 4;
  float before = wd[0];
  CHECK(dlc_session_run(s, "fit", 2, fit_names, fit_in, 1, &loss) == DLC_OK);
  CHECK(loss.rank == 0 && *(float *)loss.data > 0);
  CHECK(wd[0] != before);
}

/* Integer inputs outside their descriptor ranges are refused before the
 * entry runs, naming the input, the element and the range. */
static void test_ranges(dlc_session *s) {
  _Alignas(64) float x[2 * 3] = {1, 2, 3, 4, 5, 6};
  int32_t idx[2] = {2, 0}, len[2] = {1, 2};
  const char *names[] = {"x", "idx", "len"};
  dlc_tensor in[3] = {tensor2(x, 2, 3), tensor2(NULL, 2, 0), tensor2(NULL, 2, 0)}, out;
  in[1].data = idx, in[2].data = len;
  for (int k = 1; k < 3; k++) {
    in[k].dtype = DLC_I32;
    in[k].rank = 1;
  }
  CHECK(dlc_session_run(s, "pick", 3, names, in, 1, &out) == DLC_OK);
  CHECK(((float *)out.data)[0] == 3.0f && ((float *)out.data)[1] == 8.0f);
  idx[1] = 3;
  CHECK_ERR(dlc_session_run(s, "pick", 3, names, in, 1, &out), DLC_ERR_INVALID_ARGUMENT,
            "input 'idx' of entry 'pick': idx[1] is 3, outside the valid range [0, 2]");
  idx[1] = 0;
  len[0] = 3;
  CHECK_ERR(dlc_session_run(s, "pick", 3, names, in, 1, &out), DLC_ERR_INVALID_ARGUMENT,
            "len[0] is 3, outside the valid range [1, batch] = [1, 2]");
}

/* Threads sharing one session: each runs the model and the gradients on
 * inputs of its own into memory of its own (dlc_session_run's views would
 * be replaced by another thread's next run), and sets a param to its
 * current value; every result must be the serial one. */
enum { N_THREADS = 4, N_ITERS = 2000 };

typedef struct thread_job {
  dlc_session *s;
  int id;
  _Alignas(64) float x[4 * 3], t[4 * 2];
  float want_y[4 * 2], want_loss, want_gw[6];
  int wrong;
} thread_job;

static void run_job(thread_job *j, float *y, float *loss, float *gw, float *gb) {
  const char *xn[] = {"x"}, *xtn[] = {"x", "t"};
  dlc_tensor x = tensor2(j->x, 4, 3), xt[2] = {tensor2(j->x, 4, 3), tensor2(j->t, 4, 2)};
  dlc_tensor out_y = tensor2(y, 4, 2), grads[3] = {tensor2(loss, 0, 0), tensor2(gw, 2, 3),
                                                   tensor2(gb, 2, 0)};
  grads[0].rank = 0;
  grads[2].rank = 1;
  if (dlc_session_run_into(j->s, "model", 1, xn, &x, 1, &out_y) != DLC_OK ||
      dlc_session_run_into(j->s, "fit.grads", 2, xtn, xt, 3, grads) != DLC_OK)
    j->wrong++;
}

static void *thread_main(void *arg) {
  thread_job *j = (thread_job *)arg;
  _Alignas(64) float y[8], loss[16], gw[16], gb[16];
  for (int it = 0; it < N_ITERS; it++) {
    run_job(j, y, loss, gw, gb);
    j->wrong += memcmp(y, j->want_y, sizeof j->want_y) != 0 || loss[0] != j->want_loss ||
                memcmp(gw, j->want_gw, sizeof j->want_gw) != 0;
    dlc_tensor w;
    if (it % 64 == 0 && dlc_session_param(j->s, "W", &w) == DLC_OK) {
      _Alignas(64) float copy[6];
      dlc_tensor value = tensor2(copy, 2, 3);
      memcpy(copy, w.data, sizeof copy); /* no train runs: W does not change */
      j->wrong += dlc_session_set_param(j->s, "W", &value) != DLC_OK;
    }
  }
  return NULL;
}

static void test_threads(dlc_session *s) {
  static thread_job jobs[N_THREADS];
  _Alignas(64) float y[8], loss[16], gw[16], gb[16];
  for (int k = 0; k < N_THREADS; k++) {
    thread_job *j = &jobs[k];
    memset(j, 0, sizeof *j);
    j->s = s;
    j->id = k;
    for (int i = 0; i < 12; i++)
      j->x[i] = (float)(i * (k + 1)) * 0.125f;
    for (int i = 0; i < 8; i++)
      j->t[i] = (float)(i - k);
    run_job(j, y, loss, gw, gb); /* the serial results */
    memcpy(j->want_y, y, sizeof j->want_y);
    j->want_loss = loss[0];
    memcpy(j->want_gw, gw, sizeof j->want_gw);
  }
  pthread_t threads[N_THREADS];
  for (int k = 0; k < N_THREADS; k++)
    CHECK(pthread_create(&threads[k], NULL, thread_main, &jobs[k]) == 0);
  for (int k = 0; k < N_THREADS; k++) {
    pthread_join(threads[k], NULL);
    CHECK(jobs[k].wrong == 0);
  }
}

static void test_weights(dlc_session *s, const char *dir) {
  char path[4096], bad[4096];
  snprintf(path, sizeof path, "%s/w.safetensors", dir);
  snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
  dlc_tensor w;
  dlc_session_param(s, "W", &w);
  float *wd = (float *)w.data, saved = wd[0];
  CHECK(dlc_session_save(s, path) == DLC_OK);
  wd[0] = 123.0f;
  CHECK(dlc_session_load(s, path) == DLC_OK);
  CHECK(wd[0] == saved);

  static const char garbage[] = "\x10\0\0\0\0\0\0\0{\"W\": [1, 2, 3]}";
  FILE *f = fopen(bad, "wb");
  fwrite(garbage, 1, sizeof garbage - 1, f);
  fclose(f);
  wd[0] = 5.0f;
  CHECK_ERR(dlc_session_load(s, bad), DLC_ERR_FORMAT, "malformed header");
  CHECK(wd[0] == 5.0f);
  /* Truncated: every prefix of a valid file is refused. */
  f = fopen(path, "rb");
  static unsigned char whole[1 << 16];
  size_t size = f ? fread(whole, 1, sizeof whole, f) : 0;
  if (f)
    fclose(f);
  for (size_t n = 0; n < size; n += 97) {
    f = fopen(bad, "wb");
    fwrite(whole, 1, n, f);
    fclose(f);
    CHECK(dlc_session_load(s, bad) == DLC_ERR_FORMAT);
  }
  CHECK(wd[0] == 5.0f);
  char missing[4200];
  snprintf(missing, sizeof missing, "%s/nope.safetensors", dir);
  CHECK_ERR(dlc_session_load(s, missing), DLC_ERR_NOT_FOUND, "not found");
  CHECK_ERR(dlc_session_load(s, dir), DLC_ERR_IO, "is a directory");
  snprintf(missing, sizeof missing, "%s/no/such/dir/w.safetensors", dir);
  CHECK_ERR(dlc_session_save(s, missing), DLC_ERR_IO, "cannot write");
}

/* A file holding W and a tensor the program lacks: a partial load takes W,
 * ignores the other and flags what it loaded; a strict one refuses it. */
static void test_partial_load(dlc_session *s, const dlc_program_desc *d, const char *dir) {
  static const char header[] =
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      "\"head.weight\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[24,28]}}";
  const float w_file[6] = {1, 2, 3, 4, 5, 6};
  unsigned char len8[8] = {0};
  for (int i = 0; i < 8; i++)
    len8[i] = (unsigned char)((sizeof header - 1) >> (8 * i));
  char path[4096];
  snprintf(path, sizeof path, "%s/partial.safetensors", dir);
  FILE *f = fopen(path, "wb");
  CHECK(f != NULL);
  fwrite(len8, 1, 8, f);
  fwrite(header, 1, sizeof header - 1, f);
  fwrite(w_file, 1, sizeof w_file, f);
  fwrite("\1\2\3\4", 1, 4, f);
  fclose(f);

  dlc_tensor w, b;
  dlc_session_param(s, "W", &w);
  dlc_session_param(s, "b", &b);
  float *wd = (float *)w.data, *bd = (float *)b.data, b0 = bd[0];
  wd[0] = 9.0f;
  CHECK_ERR(dlc_session_load(s, path), DLC_ERR_FORMAT, "'head.weight' is not a param");
  CHECK(wd[0] == 9.0f);
  uint8_t found[64];
  memset(found, 7, sizeof found);
  CHECK_ERR(dlc_session_load_partial(s, path, d->n_tensors - 1, found),
            DLC_ERR_INVALID_ARGUMENT, "fewer than the");
  CHECK(found[0] == 7 && wd[0] == 9.0f);
  CHECK(dlc_session_load_partial(s, path, (int32_t)sizeof found, found) == DLC_OK);
  for (int k = 0; k < 6; k++)
    CHECK(wd[k] == w_file[k]);
  CHECK(bd[0] == b0);
  CHECK(strcmp(d->tensors[0].name, "W") == 0 && d->tensors[0].role == DLC_ROLE_PARAM);
  for (int32_t i = 0; i < d->n_tensors; i++)
    CHECK(found[i] == (i == 0));
  CHECK(found[d->n_tensors] == 7); /* nothing past the table */
  wd[0] = 9.0f;
  CHECK(dlc_session_load_partial(s, path, 0, NULL) == DLC_OK && wd[0] == 1.0f);
}

/* The descriptor a program library exports, read without the runtime. */
static const dlc_program_desc *desc_of(const char *path, void **handle) {
  *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (*handle == NULL)
    return NULL;
  void *sym = dlsym(*handle, DLC_PROGRAM_SYMBOL);
  dlc_program_fn fn;
  memcpy(&fn, &sym, sizeof fn);
  return sym ? fn() : NULL;
}

/* A linked-in program (no dlopen by the runtime) and the no-malloc
 * functions on caller memory, checked against a session of the same
 * program. */
static void test_caller_memory(const char *good, const char *badabi, const char *dir) {
  void *h_good, *h_bad;
  const dlc_program_desc *d = desc_of(good, &h_good), *bad = desc_of(badabi, &h_bad);
  CHECK(d != NULL && bad != NULL);
  if (d == NULL || bad == NULL)
    return;
  dlc_program *p = NULL;
  CHECK_ERR(dlc_program_from_descriptor(NULL, "x", &p), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_program_from_descriptor(d, "x", NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_program_from_descriptor(bad, "linked", &p), DLC_ERR_ABI,
            "program 'linked' was compiled for runtime ABI version 99");
  CHECK(p == NULL);
  CHECK(dlc_program_from_descriptor(d, "linked", &p) == DLC_OK);
  dlc_session_options opts;
  dlc_session_options_initialize(&opts);
  opts.seed = 11;
  dlc_session *s = NULL;
  CHECK(dlc_session_create(p, &opts, &s) == DLC_OK);
  dlc_program_release(p);
  if (s == NULL)
    return;

  /* One aligned region for the params and states, as the generated header
   * lays them out; NULL for inputs and outputs. */
  enum { MAX_T = 32 };
  void *table[MAX_T] = {0};
  size_t offset[MAX_T], total = 0;
  CHECK(d->n_tensors <= MAX_T);
  for (int32_t i = 0; i < d->n_tensors && i < MAX_T; i++) {
    const dlc_tensor_desc *t = &d->tensors[i];
    size_t n = t->dtype == DLC_F64 ? 8 : 4;
    for (int32_t k = 0; k < t->rank; k++)
      n *= (size_t)(t->dims[k] < 0 ? 0 : t->dims[k]);
    offset[i] = total;
    if (t->role <= DLC_ROLE_STATE)
      total += (n + DLC_ALIGNMENT - 1) / DLC_ALIGNMENT * DLC_ALIGNMENT;
  }
  unsigned char *region = (unsigned char *)aligned_alloc(DLC_ALIGNMENT, total);
  for (int32_t i = 0; i < d->n_tensors && i < MAX_T; i++)
    if (d->tensors[i].role <= DLC_ROLE_STATE)
      table[i] = region + offset[i];

  CHECK_ERR(dlc_tensors_init(NULL, table, 1), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_tensors_init(d, NULL, 1), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_tensors_init(bad, table, 1), DLC_ERR_ABI, "ABI version 99");
  void *w = table[0];
  table[0] = NULL;
  CHECK_ERR(dlc_tensors_init(d, table, 1), DLC_ERR_INVALID_ARGUMENT,
            "tensor 0 ('W') is NULL");
  table[0] = (unsigned char *)w + 4;
  CHECK_ERR(dlc_tensors_init(d, table, 1), DLC_ERR_INVALID_ARGUMENT,
            "tensor 0 ('W') is not 64-byte aligned");
  table[0] = w;
  CHECK(dlc_tensors_init(d, table, 11) == DLC_OK);
  int32_t n = 0;
  dlc_session_param_count(s, &n);
  for (int32_t i = 0; i < n; i++) {
    const char *name;
    dlc_tensor view;
    dlc_session_param_at(s, i, &name, &view);
    size_t bytes = view.dtype == DLC_F64 ? 8 : 4;
    for (int32_t k = 0; k < view.rank; k++)
      bytes *= (size_t)view.dims[k];
    CHECK(memcmp(view.data, table[i], bytes) == 0); /* params come first */
  }

  /* Save from the session, load into caller memory: from the file, and from
   * the file's bytes in memory; and the other way round. */
  char path[4096];
  snprintf(path, sizeof path, "%s/caller.safetensors", dir);
  dlc_tensor wv;
  dlc_session_param(s, "W", &wv);
  ((float *)wv.data)[0] = 42.0f;
  CHECK(dlc_session_save(s, path) == DLC_OK);
  CHECK(dlc_tensors_load(d, table, path) == DLC_OK);
  CHECK(((float *)table[0])[0] == 42.0f);
  FILE *f = fopen(path, "rb");
  static unsigned char file[1 << 16];
  size_t size = f ? fread(file, 1, sizeof file, f) : 0;
  if (f)
    fclose(f);
  ((float *)table[0])[0] = 1.0f;
  CHECK(dlc_tensors_load_memory(d, table, file, size) == DLC_OK);
  CHECK(((float *)table[0])[0] == 42.0f);
  ((float *)table[0])[0] = 1.0f;
  CHECK_ERR(dlc_tensors_load_memory(d, table, file, size - 1), DLC_ERR_FORMAT,
            "weights file '(memory)'");
  CHECK_ERR(dlc_tensors_load_memory(d, table, file, 5), DLC_ERR_FORMAT, "truncated");
  CHECK_ERR(dlc_tensors_load_memory(d, table, file, 0), DLC_ERR_FORMAT, "truncated");
  CHECK_ERR(dlc_tensors_load_memory(d, table, NULL, 10), DLC_ERR_INVALID_ARGUMENT, "NULL");
  file[20] ^= 0x55; /* inside the JSON header */
  CHECK(dlc_tensors_load_memory(d, table, file, size) != DLC_OK);
  CHECK(((float *)table[0])[0] == 1.0f); /* unchanged by failed loads */
  CHECK(dlc_tensors_save(d, table, path) == DLC_OK);
  CHECK(dlc_session_load(s, path) == DLC_OK);
  CHECK(((float *)wv.data)[0] == 1.0f);
  CHECK_ERR(dlc_tensors_save(d, table, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(dlc_tensors_load(d, table, NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");

  /* An entry called directly on caller memory, as generated code does. */
  float x[2 * 3] = {1, 2, 3, 4, 5, 6}, y[2 * 2];
  int64_t batch = 2;
  const dlc_entry_desc *model = &d->entries[0];
  unsigned char *ws = (unsigned char *)aligned_alloc(DLC_ALIGNMENT, 64 * 4);
  CHECK(model->workspace_bytes(&batch) <= 64 * 4);
  for (int32_t k = 0; k < d->n_tensors; k++)
    if (strcmp(d->tensors[k].name, "x") == 0)
      table[k] = x;
    else if (strcmp(d->tensors[k].name, "y") == 0)
      table[k] = aligned_alloc(DLC_ALIGNMENT, 64);
  CHECK(model->run(table, &batch, ws, NULL) == 0);
  const char *names[] = {"x"};
  dlc_tensor in = tensor2(x, 2, 3), out;
  dlc_session_run(s, "model", 1, names, &in, 1, &out);
  for (int32_t k = 0; k < d->n_tensors; k++)
    if (strcmp(d->tensors[k].name, "y") == 0) {
      memcpy(y, table[k], sizeof y);
      free(table[k]);
    }
  CHECK(memcmp(y, out.data, sizeof y) == 0);
  free(ws);
  free(region);
  dlc_session_release(s);
  dlclose(h_good);
  dlclose(h_bad);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s fake_program.so fake_program_badabi.so dir\n", argv[0]);
    return 2;
  }
  CHECK(strcmp(dlc_status_name(DLC_ERR_FORMAT), "FORMAT") == 0);
  CHECK(strcmp(dlc_status_name((dlc_status)42), "UNKNOWN") == 0);

  dlc_program *p = NULL;
  CHECK_ERR(dlc_program_load("/nonexistent/p.so", &p), DLC_ERR_NOT_FOUND, "not found");
  CHECK_ERR(dlc_program_load(argv[2], &p), DLC_ERR_ABI, "ABI version 99");
  char implements[64];
  snprintf(implements, sizeof implements, "implements version %d", DLC_ABI_VERSION);
  CHECK(strstr(dlc_status_message(), implements) != NULL);
  CHECK(p == NULL);
  CHECK(dlc_program_load(argv[1], &p) == DLC_OK);
  if (p == NULL)
    return 1;
  const dlc_program_desc *d;
  CHECK(dlc_program_descriptor(p, &d) == DLC_OK && d->n_entries == 5);

  dlc_session_options opts;
  dlc_session_options_initialize(&opts);
  opts.seed = 7;
  dlc_session *s = NULL;
  CHECK(dlc_session_create(p, &opts, &s) == DLC_OK);
  /* The session keeps the program loaded. */
  dlc_program_release(p);
  if (s == NULL)
    return 1;
  int32_t n = 0;
  CHECK(dlc_session_param_count(s, &n) == DLC_OK && n == 5);
  dlc_program *p2 = NULL;
  CHECK(dlc_program_load(argv[1], &p2) == DLC_OK);
  test_nulls(p2, s);
  dlc_program_release(p2);
  test_run(s);
  test_ranges(s);
  test_threads(s);
  test_weights(s, argv[3]);
  test_partial_load(s, d, argv[3]);
  dlc_session_release(s);
  test_caller_memory(argv[1], argv[2], argv[3]);
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed != 0;
}
