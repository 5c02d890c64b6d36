/* classify: the moons classifier (examples/moons.dl) in a C program, with
 * weights trained elsewhere (e.g. from Python) and a runtime session.
 *
 *   classify WEIGHTS.safetensors INPUTS.txt
 *
 * INPUTS.txt: a line "n 2", then n lines of two numbers (the points). Prints
 * one line per point: the predicted class and the two logits. */
#include <stdio.h>
#include <stdlib.h>

#include "moons.h"

static int fail(const char *what, dlc_status st) {
  fprintf(stderr, "classify: %s: %s (%s)\n", what, dlc_status_message(),
          dlc_status_name(st));
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s WEIGHTS.safetensors INPUTS.txt\n", argv[0]);
    return 2;
  }
  FILE *f = fopen(argv[2], "r");
  long long n = 0, d = 0;
  if (f == NULL || fscanf(f, "%lld %lld", &n, &d) != 2 || n < 1 || d != 2) {
    fprintf(stderr, "classify: %s: expected a first line \"n 2\"\n", argv[2]);
    return 1;
  }
  float *x = (float *)malloc(MOONS_MOONS_X_BYTES(n));
  float *logits = (float *)malloc(MOONS_MOONS_LOGITS_BYTES(n));
  for (long long i = 0; i < n * 2; i++)
    if (x == NULL || fscanf(f, "%f", &x[i]) != 1) {
      fprintf(stderr, "classify: %s: expected %lld numbers\n", argv[2], n * 2);
      return 1;
    }
  fclose(f);

  dlc_program *program = NULL;
  dlc_session *session = NULL;
  dlc_status st = moons_open(&program);
  if (st != DLC_OK)
    return fail("opening the program", st);
  dlc_session_options options;
  dlc_session_options_initialize(&options);
  options.num_threads = 1;
  if ((st = dlc_session_create(program, &options, &session)) != DLC_OK)
    return fail("creating a session", st);
  dlc_program_release(program); /* the session keeps it */
  if ((st = dlc_session_load(session, argv[1])) != DLC_OK)
    return fail("loading the weights", st);
  if ((st = moons_moons(session, n, x, logits)) != DLC_OK)
    return fail("running the model", st);
  for (long long i = 0; i < n; i++)
    printf("%d %.9g %.9g\n", logits[2 * i + 1] > logits[2 * i], logits[2 * i],
           logits[2 * i + 1]);
  dlc_session_release(session);
  free(x);
  free(logits);
  return 0;
}
