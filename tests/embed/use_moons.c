/* Drives the generated interface of examples/moons.dl (`dlc compile
 * --emit=lib -o DIR/moons`), for test_embed.py:
 *   use_moons DIR
 * Both layers on the same points (session, and no-malloc on caller memory)
 * must agree; bad use must give a status (and, with the runtime, a
 * message). Prints the session's logits for the points, one row per line,
 * for Python to compare, then "N passed, M failed". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moons.h"

#include "../check.h"

enum { N = 5 };
static const float X[N * 2] = {0.1f, 0.2f, 1.0f, -0.5f, 2.0f, 0.3f, -1.0f, 0.5f, 0.5f, 0.25f};
static const int32_t T[N] = {0, 1, 1, 0, 1};

int main(int argc, char **argv) {
  if (argc != 2)
    return 2;
  char path[4096];
  dlc_program *program = NULL;
  dlc_session *session = NULL;
  dlc_session_options options;
  dlc_session_options_initialize(&options);
  options.num_threads = 1; /* serial, as the no-malloc calls: equal bits */
  CHECK(moons_open(&program) == DLC_OK);
  CHECK(dlc_session_create(program, &options, &session) == DLC_OK);
  dlc_program_release(program);
  if (session == NULL)
    return 1;

  float logits[N * 2], logits2[N * 2], loss, loss2;
  CHECK(moons_moons(session, N, X, logits) == DLC_OK);
  for (int i = 0; i < N; i++)
    printf("%.9g %.9g\n", logits[2 * i], logits[2 * i + 1]);
  CHECK(moons_moons(session, N, X, NULL) == DLC_OK); /* outputs may be skipped */

  /* No-malloc: seed 0, as the session; the same logits and training step. */
  size_t ws_bytes = moons_fit_grads_workspace_bytes(N);
  if (moons_moons_workspace_bytes(N) > ws_bytes)
    ws_bytes = moons_moons_workspace_bytes(N);
  if (moons_fit_workspace_bytes(N) > ws_bytes)
    ws_bytes = moons_fit_workspace_bytes(N);
  unsigned char *weights = (unsigned char *)aligned_alloc(MOONS_ALIGNMENT, MOONS_WEIGHTS_BYTES);
  unsigned char *ws = (unsigned char *)aligned_alloc(MOONS_ALIGNMENT, (ws_bytes / 64 + 1) * 64);
  CHECK(moons_init_weights(weights, 0) == DLC_OK);
  dlc_tensor w;
  CHECK(dlc_session_param(session, "fc1.weight", &w) == DLC_OK);
  CHECK(memcmp(w.data, weights + MOONS_FC1_WEIGHT_OFFSET, 16 * 2 * sizeof(float)) == 0);
  CHECK(moons_moons_run(weights, N, X, logits2, ws, NULL) == DLC_OK);
  CHECK(memcmp(logits, logits2, sizeof logits) == 0);
  CHECK(moons_fit(session, N, X, T, &loss) == DLC_OK);
  CHECK(moons_fit_run(weights, N, X, T, &loss2, ws, NULL) == DLC_OK);
  CHECK(loss == loss2 && loss > 0);
  CHECK(memcmp(w.data, weights + MOONS_FC1_WEIGHT_OFFSET, 16 * 2 * sizeof(float)) == 0);
  float g[7][32 * 16];
  CHECK(moons_fit_grads(session, N, X, T, &loss, g[0], g[1], g[2], g[3], g[4], g[5]) == DLC_OK);
  CHECK(moons_fit_grads_run(weights, N, X, T, &loss2, g[6], g[1], g[2], g[3], g[4], g[5], ws,
                            NULL) == DLC_OK);
  CHECK(loss == loss2 && memcmp(g[0], g[6], 16 * 2 * sizeof(float)) == 0);

  /* Weights files between the two layers. */
  snprintf(path, sizeof path, "%s/w.safetensors", argv[1]);
  CHECK(moons_save_weights(weights, path) == DLC_OK);
  CHECK(dlc_session_load(session, path) == DLC_OK);
  CHECK(dlc_session_save(session, path) == DLC_OK);
  CHECK(moons_load_weights(weights, path) == DLC_OK);

  /* Bad use. */
  CHECK_ERR(moons_open(NULL), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(moons_moons(NULL, N, X, logits), DLC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK_ERR(moons_moons(session, 0, X, logits), DLC_ERR_INVALID_ARGUMENT,
            "binds symbol 'batch', which must be >= 1");
  CHECK_ERR(moons_moons(session, N, NULL, logits), DLC_ERR_INVALID_ARGUMENT, "has no data");
  CHECK_ERR(moons_load_weights(weights, "/nonexistent/w.safetensors"), DLC_ERR_NOT_FOUND,
            "not found");
  CHECK_ERR(moons_init_weights(weights + 4, 0), DLC_ERR_INVALID_ARGUMENT, "aligned");
  FILE *f = fopen(path, "r+b");
  if (f != NULL) { /* tamper: a header length past the end of the file */
    unsigned char big[8] = {0xff, 0xff, 0, 0, 0, 0, 0, 0};
    fwrite(big, 1, 8, f);
    fclose(f);
  }
  CHECK_ERR(moons_load_weights(weights, path), DLC_ERR_FORMAT, "header claims 65535 bytes");
  CHECK_ERR(dlc_session_load(session, path), DLC_ERR_FORMAT, "header claims 65535 bytes");
  CHECK(moons_moons_run(weights, 0, X, logits, ws, NULL) == DLC_ERR_INVALID_ARGUMENT);
  CHECK(moons_moons_run(NULL, N, X, logits, ws, NULL) == DLC_ERR_INVALID_ARGUMENT);
  CHECK(moons_moons_run(weights + 8, N, X, logits, ws, NULL) == DLC_ERR_INVALID_ARGUMENT);
  CHECK(moons_moons_run(weights, N, NULL, logits, ws, NULL) == DLC_ERR_INVALID_ARGUMENT);
  CHECK(moons_moons_run(weights, N, X, NULL, ws, NULL) == DLC_ERR_INVALID_ARGUMENT);
  CHECK(moons_moons_run(weights, N, X, logits, NULL, NULL) == DLC_ERR_INVALID_ARGUMENT);
  CHECK(moons_moons_run(weights, N, X, logits, ws + 1, NULL) == DLC_ERR_INVALID_ARGUMENT);
  /* A failed call leaves the session usable. */
  CHECK(moons_moons(session, N, X, logits2) == DLC_OK);

  dlc_session_release(session);
  free(weights);
  free(ws);
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed != 0;
}
