/* train: trains the moons classifier (examples/moons.dl) from C, in the
 * no-malloc mode: the program allocates nothing; this file owns the weights
 * region and the workspace, sized by the generated header.
 *
 *   train DATA.txt EPOCHS BATCH SEED OUT.safetensors
 *
 * DATA.txt: a line "n 2", then n lines "x0 x1 label". Initialises the
 * params from SEED, runs EPOCHS passes of training steps over the data in
 * order, BATCH points a step, prints each epoch's mean loss and the final
 * accuracy on the data, and saves the weights. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "moons.h"

static void *aligned(size_t bytes) {
  /* aligned_alloc wants a multiple of the alignment. */
  size_t a = MOONS_ALIGNMENT;
  return aligned_alloc(a, (bytes + a - 1) / a * a + a);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s DATA.txt EPOCHS BATCH SEED OUT.safetensors\n", argv[0]);
    return 2;
  }
  int epochs = atoi(argv[2]), batch = atoi(argv[3]);
  uint64_t seed = strtoull(argv[4], NULL, 10);
  FILE *f = fopen(argv[1], "r");
  long long n = 0, d = 0;
  if (f == NULL || fscanf(f, "%lld %lld", &n, &d) != 2 || n < 1 || d != 2 ||
      epochs < 1 || batch < 1) {
    fprintf(stderr, "train: bad arguments or data file\n");
    return 1;
  }
  float *x = (float *)malloc(MOONS_FIT_X_BYTES(n));
  int32_t *t = (int32_t *)malloc(MOONS_FIT_T_BYTES(n));
  for (long long i = 0; i < n; i++)
    if (x == NULL || t == NULL ||
        fscanf(f, "%f %f %d", &x[2 * i], &x[2 * i + 1], &t[i]) != 3) {
      fprintf(stderr, "train: %s: expected %lld rows \"x0 x1 label\"\n", argv[1], n);
      return 1;
    }
  fclose(f);

  /* Every region the program uses, sized for the largest step. */
  void *weights = aligned(MOONS_WEIGHTS_BYTES);
  size_t ws_fit = moons_fit_workspace_bytes(batch), ws_run = moons_moons_workspace_bytes(n);
  void *workspace = aligned(ws_fit > ws_run ? ws_fit : ws_run);
  float *logits = (float *)malloc(MOONS_MOONS_LOGITS_BYTES(n));
  dlc_status st = moons_init_weights(weights, seed);
  if (st != DLC_OK) {
    fprintf(stderr, "train: %s\n", dlc_status_message());
    return 1;
  }
  for (int e = 1; e <= epochs; e++) {
    double total = 0;
    int steps = 0;
    for (long long i = 0; i < n; i += batch, steps++) {
      long long b = n - i < batch ? n - i : batch;
      float loss;
      if (moons_fit_run(weights, b, x + 2 * i, t + i, &loss, workspace, NULL) != DLC_OK) {
        fprintf(stderr, "train: a training step failed\n");
        return 1;
      }
      total += loss;
    }
    printf("epoch %d loss %.9g\n", e, total / steps);
  }
  if (moons_moons_run(weights, n, x, logits, workspace, NULL) != DLC_OK)
    return 1;
  long long right = 0;
  for (long long i = 0; i < n; i++)
    right += (logits[2 * i + 1] > logits[2 * i]) == t[i];
  printf("accuracy %.4f\n", (double)right / (double)n);
  if ((st = moons_save_weights(weights, argv[5])) != DLC_OK) {
    fprintf(stderr, "train: %s\n", dlc_status_message());
    return 1;
  }
  free(weights);
  free(workspace);
  free(logits);
  free(x);
  free(t);
  return 0;
}
