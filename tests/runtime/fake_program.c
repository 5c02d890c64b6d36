/* A hand-written program library standing in for compiler output, so the
 * runtime can be tested alone. Model: y = x @ W^T + b over a symbolic batch;
 * "fit" takes one SGD-with-momentum step on mean((y - t)^2); "fit.grads"
 * returns the loss and the gradients; "boom" fails; "pick" takes integer
 * inputs with ranges: picked[n] = x[n, idx[n]] * len[n], idx in [0, 2] and
 * len in [1, batch]. FAKE_BAD=n breaks the
 * descriptor in one way each, FAKE_ABI_VERSION overrides the ABI version,
 * FAKE_B_INIT the init rule of b. */
#include <stdint.h>
#include <string.h>

#include "dlc/program.h"

#ifndef FAKE_ABI_VERSION
#define FAKE_ABI_VERSION DLC_ABI_VERSION
#endif
#ifndef FAKE_BAD
#define FAKE_BAD 0
#endif
#ifndef FAKE_B_INIT
#define FAKE_B_INIT DLC_INIT_ZEROS
#endif

#if defined(_WIN32)
#define EXPORT __declspec(dllexport)
#else
#define EXPORT __attribute__((visibility("default")))
#endif

enum { W, B, EMB, SCALE, COUNT, MOM, X, T, Y, LOSS, GW, GB, IDX, LEN, PICKED, N_TENSORS };

static const int64_t d_w[] = {2, 3}, d_b[] = {2}, d_emb[] = {100, 10},
                     d_scale[] = {1000}, d_count[] = {3}, d_x[] = {-1, 3},
                     d_t[] = {-1, 2}, d_sym[] = {-1, 2}, d_batch[] = {-1};
static const char *const sym_names[] = {"batch"};

static const dlc_tensor_desc tensors[N_TENSORS] = {
    {"W", DLC_ROLE_PARAM, DLC_F32, 2, DLC_INIT_UNIFORM, d_w, -0.5, 0.5},
    {"b", DLC_ROLE_PARAM, DLC_F32, 1, FAKE_B_INIT, d_b, 0, 1},
    {"emb.weight", DLC_ROLE_PARAM, DLC_F32, 2, DLC_INIT_UNIFORM, d_emb, -0.1, 0.1},
    {"scale", DLC_ROLE_PARAM, DLC_F64, 1, DLC_INIT_NORMAL, d_scale, 1.0, 0.5},
    {"count", DLC_ROLE_PARAM, DLC_I32, 1, DLC_INIT_ONES, d_count, 0, 0},
    {"W.momentum", DLC_ROLE_STATE, DLC_F32, 2, DLC_INIT_ZEROS, d_w, 0, 0},
    {"x", DLC_ROLE_INPUT, DLC_F32, 2, 0, d_x, 0, 0},
    {"t", DLC_ROLE_INPUT, DLC_F32, 2, 0, d_t, 0, 0},
    {"y", DLC_ROLE_OUTPUT, DLC_F32, 2, 0, d_t, 0, 0},
    {"loss", DLC_ROLE_OUTPUT, DLC_F32, 0, 0, NULL, 0, 0},
    {"W", DLC_ROLE_OUTPUT, DLC_F32, 2, 0, d_w, 0, 0},
    {"b", DLC_ROLE_OUTPUT, DLC_F32, 1, 0, d_b, 0, 0},
    {"idx", DLC_ROLE_INPUT, DLC_I32, 1, 0, d_batch, 0, 0, 1, -1, 0, 2},
    {"len", DLC_ROLE_INPUT, DLC_I32, 1, 0, d_batch, 0, 0, 1, 0, 1, 0},
    {"picked", DLC_ROLE_OUTPUT, DLC_F32, 1, 0, d_batch, 0, 0},
};

static int aligned(const void *p) { return ((uintptr_t)p & 63) == 0; }

/* y[n, 2] = x[n, 3] @ W^T + b */
static void forward(void *const *t, int64_t n, float *y) {
  const float *x = (const float *)t[X], *w = (const float *)t[W],
              *b = (const float *)t[B];
  for (int64_t i = 0; i < n; i++)
    for (int o = 0; o < 2; o++) {
      float acc = b[o];
      for (int k = 0; k < 3; k++)
        acc += x[i * 3 + k] * w[o * 3 + k];
      y[i * 2 + o] = acc;
    }
}

static int64_t ws_model(const int64_t *syms) { return syms[0] * 2 * (int64_t)sizeof(float); }

static int32_t run_model(void *const *t, const int64_t *syms, void *ws,
                         const dlc_host *host) {
  (void)host;
  if (!aligned(ws) || !aligned(t[W]) || !aligned(t[Y]))
    return 3;
  if (t[T] != NULL) /* inputs of other entries must not leak in */
    return 5;
  float *tmp = (float *)ws;
  forward(t, syms[0], tmp);
  memcpy(t[Y], tmp, (size_t)(syms[0] * 2) * sizeof(float));
  return 0;
}

/* Loss and gradients of mean((y - t)^2); dy lives in the workspace. */
static float grads(void *const *t, int64_t n, float *dy, float *gw, float *gb) {
  const float *x = (const float *)t[X], *tg = (const float *)t[T];
  forward(t, n, dy);
  float loss = 0;
  for (int64_t i = 0; i < n * 2; i++) {
    float r = dy[i] - tg[i];
    loss += r * r;
    dy[i] = 2 * r / (float)(n * 2);
  }
  memset(gw, 0, 6 * sizeof(float));
  memset(gb, 0, 2 * sizeof(float));
  for (int64_t i = 0; i < n; i++)
    for (int o = 0; o < 2; o++) {
      gb[o] += dy[i * 2 + o];
      for (int k = 0; k < 3; k++)
        gw[o * 3 + k] += dy[i * 2 + o] * x[i * 3 + k];
    }
  return loss / (float)(n * 2);
}

static int32_t run_fit(void *const *t, const int64_t *syms, void *ws,
                         const dlc_host *host) {
  (void)host;
  if (!aligned(ws) || t[Y] != NULL)
    return 3;
  float gw[6], gb[2];
  float loss = grads(t, syms[0], (float *)ws, gw, gb);
  float *w = (float *)t[W], *b = (float *)t[B], *v = (float *)t[MOM];
  for (int i = 0; i < 6; i++) {
    v[i] = 0.9f * v[i] + gw[i];
    w[i] -= 0.1f * v[i];
  }
  for (int i = 0; i < 2; i++)
    b[i] -= 0.1f * gb[i];
  *(float *)t[LOSS] = loss;
  return 0;
}

static int32_t run_grads(void *const *t, const int64_t *syms, void *ws,
                         const dlc_host *host) {
  (void)host;
  if (!aligned(ws))
    return 3;
  *(float *)t[LOSS] = grads(t, syms[0], (float *)ws, (float *)t[GW], (float *)t[GB]);
  return 0;
}

static int64_t ws_none(const int64_t *syms) {
  (void)syms;
  return 0;
}

static int32_t run_boom(void *const *t, const int64_t *syms, void *ws,
                         const dlc_host *host) {
  (void)host;
  (void)t, (void)syms, (void)ws;
  return 7;
}

/* Indexes x with idx: safe only because the runtime checked the ranges. */
static int32_t run_pick(void *const *t, const int64_t *syms, void *ws,
                        const dlc_host *host) {
  (void)host, (void)ws;
  const float *x = (const float *)t[X];
  const int32_t *idx = (const int32_t *)t[IDX], *len = (const int32_t *)t[LEN];
  for (int64_t n = 0; n < syms[0]; n++)
    ((float *)t[PICKED])[n] = x[n * 3 + idx[n]] * (float)len[n];
  return 0;
}

static const int32_t in_x[] = {X}, in_xt[] = {X, T}, out_y[] = {Y},
                     out_loss[] = {LOSS}, out_grads[] = {LOSS, GW, GB},
                     in_pick[] = {X, IDX, LEN}, out_pick[] = {PICKED};

static const dlc_entry_desc entries[] = {
    {"model", DLC_ENTRY_INFER, 1, in_x, 1, out_y, run_model, ws_model},
    {"fit", DLC_ENTRY_TRAIN, 2, in_xt, 1, out_loss, run_fit, ws_model},
    {"fit.grads", DLC_ENTRY_GRADS, 2, in_xt, 3, out_grads, run_grads, ws_model},
    {"boom", DLC_ENTRY_INFER, 1, in_x, 0, NULL, run_boom, ws_none},
    {"pick", DLC_ENTRY_INFER, 3, in_pick, 1, out_pick, run_pick, ws_none},
};
#define N_ENTRIES ((int32_t)(sizeof entries / sizeof entries[0]))

EXPORT const dlc_program_desc *dlc_program(void) {
  static dlc_tensor_desc t[N_TENSORS];
  static dlc_entry_desc e[N_ENTRIES];
  static const int32_t bad_index[] = {N_TENSORS + 5}, param_index[] = {W};
  static dlc_program_desc d;
  memcpy(t, tensors, sizeof t);
  memcpy(e, entries, sizeof e);
  d.abi_version = FAKE_ABI_VERSION;
  d.n_syms = 1;
  d.sym_names = sym_names;
  d.n_tensors = N_TENSORS;
  d.tensors = t;
  d.n_entries = N_ENTRIES;
  d.entries = e;
  switch (FAKE_BAD) {
  case 1: t[B].dims = d_sym; t[B].rank = 2; break; /* a param with a symbolic dim */
  case 2: t[X].dtype = 9; break;
  case 3: e[0].inputs = bad_index; break;
  case 4: t[Y].name = NULL; break;
  case 5: return NULL;
  case 6: e[1].name = "model"; break;
  case 7: e[3].n_outputs = 1; e[3].outputs = out_y; e[3].n_inputs = 0; break;
  case 8: t[X].rank = 9; break;
  case 9: e[0].inputs = param_index; break;
  case 10: e[0].run = NULL; break;
  case 11: t[X].bounded = 1; break;
  case 12: t[LEN].hi_sym = 1; break;
  default: break;
  }
  (void)bad_index, (void)param_index;
  return &d;
}
