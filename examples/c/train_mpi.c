/* train_mpi: train.c's training, data-parallel over MPI processes: every
 * process reads the whole data, takes its slice of each batch, computes its
 * gradients (moons_fit_grads_run) into one contiguous buffer, and the
 * processes sum that buffer with a single MPI_Allreduce before each applies
 * the same update (moons_fit_apply_run). As dlc.distributed does in Python,
 * the buffer holds [loss, slice size, gradients], each scaled by the slice
 * size, so slices of unequal sizes give the batch's mean gradient: the same
 * steps as one process on whole batches, up to rounding.
 *
 *   mpiexec -n 2 train_mpi DATA.txt EPOCHS BATCH SEED OUT.safetensors
 *
 * Arguments and output as train.c's; rank 0 prints and saves. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "moons.h"

static void *aligned(size_t bytes) {
  size_t a = MOONS_ALIGNMENT;
  return aligned_alloc(a, (bytes + a - 1) / a * a + a);
}

/* The gradient buffer, in floats: loss and slice size, then each gradient. */
#define FLOATS(bytes) ((int)((bytes) / sizeof(float)))
enum {
  LOSS,
  COUNT,
  FC1_W,
  FC1_B = FC1_W + FLOATS(MOONS_FIT_APPLY_FC1_WEIGHT_BYTES()),
  FC2_W = FC1_B + FLOATS(MOONS_FIT_APPLY_FC1_BIAS_BYTES()),
  FC2_B = FC2_W + FLOATS(MOONS_FIT_APPLY_FC2_WEIGHT_BYTES()),
  OUT_W = FC2_B + FLOATS(MOONS_FIT_APPLY_FC2_BIAS_BYTES()),
  OUT_B = OUT_W + FLOATS(MOONS_FIT_APPLY_OUT_WEIGHT_BYTES()),
  N_GRAD = OUT_B + FLOATS(MOONS_FIT_APPLY_OUT_BIAS_BYTES())
};

static int fail(const char *what) {
  fprintf(stderr, "train_mpi: %s\n", what);
  MPI_Abort(MPI_COMM_WORLD, 1); /* the others would wait in the next allreduce */
  return 1;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc != 6)
    return fail("usage: train_mpi DATA.txt EPOCHS BATCH SEED OUT.safetensors");
  int epochs = atoi(argv[2]), batch = atoi(argv[3]);
  uint64_t seed = strtoull(argv[4], NULL, 10);
  FILE *f = fopen(argv[1], "r");
  long long n = 0, d = 0;
  if (f == NULL || fscanf(f, "%lld %lld", &n, &d) != 2 || n < 1 || d != 2 || epochs < 1 ||
      batch < size)
    return fail("bad arguments or data file (BATCH must be at least the process count)");
  float *x = (float *)malloc(MOONS_FIT_X_BYTES(n));
  int32_t *t = (int32_t *)malloc(MOONS_FIT_T_BYTES(n));
  for (long long i = 0; i < n; i++)
    if (x == NULL || t == NULL || fscanf(f, "%f %f %d", &x[2 * i], &x[2 * i + 1], &t[i]) != 3)
      return fail("expected rows \"x0 x1 label\"");
  fclose(f);

  void *weights = aligned(MOONS_WEIGHTS_BYTES);
  size_t ws_grads = moons_fit_grads_workspace_bytes(batch), ws_run = moons_moons_workspace_bytes(n);
  size_t ws_apply = moons_fit_apply_workspace_bytes();
  size_t ws = ws_grads > ws_run ? ws_grads : ws_run;
  void *workspace = aligned(ws > ws_apply ? ws : ws_apply);
  float *logits = (float *)malloc(MOONS_MOONS_LOGITS_BYTES(n));
  float *g = (float *)aligned(N_GRAD * sizeof(float));
  /* The same seed everywhere gives every process rank 0's initial weights. */
  if (moons_init_weights(weights, seed) != DLC_OK)
    return fail(dlc_status_message());
  for (int e = 1; e <= epochs; e++) {
    double total = 0;
    int steps = 0;
    for (long long i = 0; i < n; i += batch, steps++) {
      long long b = n - i < batch ? n - i : batch;
      /* This process's slice of the batch: [lo, hi), sizes differing by at most one. */
      long long lo = i + b * rank / size, hi = i + b * (rank + 1) / size, m = hi - lo;
      if (m > 0) {
        if (moons_fit_grads_run(weights, m, x + 2 * lo, t + lo, &g[LOSS], &g[FC1_W], &g[FC1_B],
                                &g[FC2_W], &g[FC2_B], &g[OUT_W], &g[OUT_B], workspace,
                                NULL) != DLC_OK)
          return fail("computing the gradients failed");
        for (int k = 0; k < N_GRAD; k++)
          if (k != COUNT)
            g[k] *= (float)m;
      } else {
        for (int k = 0; k < N_GRAD; k++)
          g[k] = 0;
      }
      g[COUNT] = (float)m;
      MPI_Allreduce(MPI_IN_PLACE, g, N_GRAD, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      float whole = g[COUNT];
      for (int k = 0; k < N_GRAD; k++)
        g[k] /= whole;
      if (moons_fit_apply_run(weights, &g[FC1_W], &g[FC1_B], &g[FC2_W], &g[FC2_B], &g[OUT_W],
                              &g[OUT_B], workspace, NULL) != DLC_OK)
        return fail("applying the update failed");
      total += g[LOSS];
    }
    if (rank == 0)
      printf("epoch %d loss %.9g\n", e, total / steps);
  }
  if (moons_moons_run(weights, n, x, logits, workspace, NULL) != DLC_OK)
    return fail("inference failed");
  long long right = 0;
  for (long long i = 0; i < n; i++)
    right += (logits[2 * i + 1] > logits[2 * i]) == t[i];
  if (rank == 0) {
    printf("accuracy %.4f\n", (double)right / (double)n);
    if (moons_save_weights(weights, argv[5]) != DLC_OK)
      return fail(dlc_status_message());
  }
  free(weights);
  free(workspace);
  free(logits);
  free(g);
  free(x);
  free(t);
  MPI_Finalize();
  return 0;
}
