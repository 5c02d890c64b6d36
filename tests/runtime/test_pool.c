/* C tests of the thread pool (runtime/src/pool.c), run by CTest: every
 * iteration of a parallel loop runs exactly once, for thread counts, loop
 * lengths and grains that leave ragged last chunks and ranges of different
 * chunk counts, called back to back (workers spinning) and after a pause
 * (workers asleep), and nested loops run inline. */
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

#include "../check.h"

#define MAX_N 1000

typedef struct {
  dlc_pool *pool;
  atomic_int counts[MAX_N];
  int64_t inner; /* nested_body: the length of the loop each iteration runs */
} job;

static void body(void *closure, int64_t begin, int64_t end) {
  job *j = (job *)closure;
  for (int64_t i = begin; i < end; i++)
    atomic_fetch_add(&j->counts[i], 1);
}

static int exactly_once(job *j, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (atomic_load(&j->counts[i]) != 1)
      return 0;
  return 1;
}

static void test_every_iteration_once(void) {
  static const int64_t lengths[] = {1, 2, 3, 5, 7, 8, 9, 16, 63, 64, 100, 999, 1000};
  static const int64_t grains[] = {1, 2, 5, 64};
  static job j;
  for (int32_t threads = 1; threads <= 4; threads++) {
    j.pool = dlc__pool_create(threads);
    CHECK(j.pool != NULL);
    for (size_t a = 0; a < sizeof lengths / sizeof *lengths; a++)
      for (size_t b = 0; b < sizeof grains / sizeof *grains; b++)
        for (int rep = 0; rep < 20; rep++) {
          int64_t n = lengths[a];
          for (int64_t i = 0; i < n; i++)
            atomic_init(&j.counts[i], 0);
          if (rep == 10) { /* past the workers' spin: they sleep */
            struct timespec pause = {0, 2000000};
            nanosleep(&pause, NULL);
          }
          dlc__pool_parallel_for(j.pool, n, grains[b], body, &j);
          CHECK(exactly_once(&j, n));
        }
    dlc__pool_release(j.pool);
  }
}

static void nested_body(void *closure, int64_t begin, int64_t end) {
  job *j = (job *)closure;
  for (int64_t i = begin; i < end; i++) {
    atomic_fetch_add(&j->counts[i], 1);
    /* the pool is busy with this loop: the nested one runs inline */
    dlc__pool_parallel_for(j->pool, j->inner, 1, body, j + 1);
  }
}

static void test_nested_loops_run_inline(void) {
  static job jobs[2]; /* the outer loop's counts, then the inner loops' */
  jobs[0].pool = jobs[1].pool = dlc__pool_create(2);
  jobs[0].inner = 10;
  for (int64_t i = 0; i < 100; i++)
    atomic_init(&jobs[0].counts[i], 0);
  for (int64_t i = 0; i < 10; i++)
    atomic_init(&jobs[1].counts[i], 0);
  dlc__pool_parallel_for(jobs[0].pool, 100, 1, nested_body, jobs);
  CHECK(exactly_once(&jobs[0], 100));
  for (int64_t i = 0; i < 10; i++)
    CHECK(atomic_load(&jobs[1].counts[i]) == 100);
  dlc__pool_release(jobs[0].pool);
}

int main(void) {
  test_every_iteration_once();
  test_nested_loops_run_inline();
  printf("%d checks passed, %d failed\n", g_passed, g_failed);
  return g_failed != 0;
}
