/* pool.c — the thread pool behind dlc_host.parallel_for.
 *
 * One pool per session. Workers are started on the first parallel loop (many
 * sessions never run one), then wait for jobs by spinning for a short while
 * (so back-to-back small calls, as in batch-1 inference, never pay a wake-up)
 * before sleeping on a condition variable.
 *
 * A job's chunks are split into one contiguous range per thread (the calling
 * thread is slot 0), and each thread runs its own range first, then takes
 * what is left of the others': a worker delayed by other load on the machine
 * only delays the chunks nobody else has taken. Owning a range matters as
 * much as sharing: the same thread touches the same data call after call,
 * so it stays in its own caches (lines moving between cores cost most when
 * the two vCPUs of a virtual machine sit on different dies: core-to-core
 * round trips of ~330 ns instead of ~55 ns). */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* How long an idle worker spins before sleeping; DLC_SPIN_US overrides. */
#define DEFAULT_SPIN_NS 100000

/* A thread's share of the current job: chunks [next, end). Threads take a
 * chunk by incrementing `next`, so thieves and the owner never run one twice.
 * One cache line each: the owner's increments must not evict its peers'. */
typedef struct {
  _Alignas(64) atomic_int_fast64_t next;
  int64_t end;
} dlc_range;

typedef struct {
  pthread_t thread;
  dlc_pool *pool;
  int32_t slot; /* its range in every job */
} dlc_worker;

struct dlc_pool {
  int32_t n_threads; /* including the caller */
  int32_t started;   /* workers running (0 until the first parallel loop) */
  dlc_worker *workers;
  dlc_range *ranges; /* one per thread: the caller's first, then the workers' */
  int64_t spin_ns;
  pthread_mutex_t lock; /* guards sleeping on `wake` */
  pthread_cond_t wake;
  /* A parallel loop is running: nested or concurrent calls run inline. An
   * atomic flag, not the mutex: a scan calls the pool once per time step. */
  atomic_int busy;
  atomic_uint_fast64_t generation; /* bumped per job; workers wait for a change */
  uint_fast64_t born; /* the generation when the workers started: their first
                         job is the next one, however late a thread starts */
  atomic_int sleepers;
  atomic_int stop;
  /* the current job */
  dlc_task_fn fn;
  void *closure;
  int64_t n, chunk;
  atomic_int open;          /* workers may still join the current job */
  atomic_int active;        /* workers inside a job (joining or running chunks) */
};

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Runs the chunks of range `slot`, then what is left of the others'. */
static void run_chunks(dlc_pool *p, int32_t slot) {
  int32_t threads = p->started + 1;
  for (int32_t k = 0; k < threads; k++) {
    dlc_range *r = &p->ranges[(slot + k) % threads];
    for (int64_t c; (c = atomic_fetch_add(&r->next, 1)) < r->end;) {
      int64_t begin = c * p->chunk;
      int64_t end = begin + p->chunk < p->n ? begin + p->chunk : p->n;
      p->fn(p->closure, begin, end);
    }
  }
}

static void *worker_main(void *arg) {
  dlc_worker *w = (dlc_worker *)arg;
  dlc_pool *p = w->pool;
  uint_fast64_t seen = p->born;
  for (;;) {
    uint_fast64_t g = atomic_load(&p->generation);
    if (g == seen) {
      int64_t deadline = now_ns() + p->spin_ns;
      for (int k = 0; (g = atomic_load(&p->generation)) == seen; k++) {
        CPU_RELAX();
        if ((k & 255) == 255) {
          if (now_ns() > deadline)
            break;
          sched_yield(); /* on a busy machine, let others run while we wait */
        }
      }
      if (g == seen) {
        pthread_mutex_lock(&p->lock);
        atomic_fetch_add(&p->sleepers, 1);
        while ((g = atomic_load(&p->generation)) == seen)
          pthread_cond_wait(&p->wake, &p->lock);
        atomic_fetch_sub(&p->sleepers, 1);
        pthread_mutex_unlock(&p->lock);
      }
    }
    seen = g;
    if (atomic_load(&p->stop))
      return NULL;
    /* Join only while the job is open: a worker woken after the caller ran
     * every chunk must not hold it up (on a loaded machine wake-ups take
     * milliseconds). Counted before looking, so the caller, which closes
     * the job and then waits for `active`, never misses a worker inside. */
    atomic_fetch_add(&p->active, 1);
    if (atomic_load(&p->open))
      run_chunks(p, w->slot);
    atomic_fetch_sub(&p->active, 1);
  }
}

dlc_status dlc__pool_threads(int32_t requested, int32_t *out_threads) {
  if (requested > 0) {
    *out_threads = requested;
    return DLC_OK;
  }
  /* Set but empty counts as unset, as shells make it easy to write. */
  const char *env = getenv("DLC_NUM_THREADS");
  if (env != NULL && env[0] != '\0') {
    char *end;
    errno = 0;
    long n = strtol(env, &end, 10);
    if (errno != 0 || end == env || *end != '\0' || n < 1 || n > DLC_MAX_THREADS)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "DLC_NUM_THREADS is '%.40s'; set it to a thread count from "
                       "1 to %d, or unset it for one thread per core",
                       env, DLC_MAX_THREADS);
    *out_threads = (int32_t)n;
    return DLC_OK;
  }
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  *out_threads = cores < 1 ? 1 : cores > DLC_MAX_THREADS ? DLC_MAX_THREADS : (int32_t)cores;
  return DLC_OK;
}

dlc_pool *dlc__pool_create(int32_t n_threads) {
  dlc_pool *p = (dlc_pool *)calloc(1, sizeof *p);
  if (p == NULL)
    return NULL;
  p->n_threads = n_threads > 0 ? n_threads : 1;
  const char *spin = getenv("DLC_SPIN_US");
  p->spin_ns = spin != NULL ? (int64_t)atoi(spin) * 1000 : DEFAULT_SPIN_NS;
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->wake, NULL);
  atomic_init(&p->generation, 0);
  atomic_init(&p->sleepers, 0);
  atomic_init(&p->stop, 0);
  atomic_init(&p->open, 0);
  atomic_init(&p->active, 0);
  atomic_init(&p->busy, 0);
  return p;
}

/* Starts the workers; on failure the pool keeps the ones it got. */
static void start_workers(dlc_pool *p) {
  p->workers = (dlc_worker *)calloc((size_t)p->n_threads, sizeof(dlc_worker));
  p->ranges = (dlc_range *)aligned_alloc(64, (size_t)p->n_threads * sizeof(dlc_range));
  if (p->workers == NULL || p->ranges == NULL) {
    p->n_threads = 1;
    return;
  }
  for (int32_t k = 0; k < p->n_threads; k++)
    atomic_init(&p->ranges[k].next, 0);
  p->born = atomic_load(&p->generation);
  for (; p->started < p->n_threads - 1; p->started++) {
    dlc_worker *w = &p->workers[p->started];
    w->pool = p;
    w->slot = p->started + 1;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
      break;
  }
}

void dlc__pool_parallel_for(void *pool, int64_t n, int64_t grain, dlc_task_fn fn,
                            void *closure) {
  dlc_pool *p = (dlc_pool *)pool;
  if (n <= 0)
    return;
  if (grain < 1)
    grain = 1;
  int inline_run = p == NULL || p->n_threads <= 1 || n < 2 * grain;
  if (!inline_run) {
    if (atomic_exchange(&p->busy, 1)) {
      inline_run = 1;
    } else {
      if (p->workers == NULL) /* only the holder of `busy` gets here */
        start_workers(p);
      inline_run = p->started == 0;
      if (inline_run)
        atomic_store(&p->busy, 0);
    }
  }
  if (inline_run) {
    fn(closure, 0, n);
    return;
  }
  /* Chunks: a few per thread so that a slow thread does not hold everyone,
   * never fewer iterations than `grain`; each thread's range an equal share. */
  int32_t threads = p->started + 1;
  int64_t parts = (int64_t)threads * 4;
  int64_t chunk = (n + parts - 1) / parts;
  p->fn = fn;
  p->closure = closure;
  p->n = n;
  p->chunk = chunk > grain ? chunk : grain;
  int64_t n_chunks = (n + p->chunk - 1) / p->chunk;
  for (int32_t k = 0; k < threads; k++) {
    atomic_store(&p->ranges[k].next, n_chunks * k / threads);
    p->ranges[k].end = n_chunks * (k + 1) / threads;
  }
  atomic_store(&p->open, 1);
  atomic_fetch_add(&p->generation, 1);
  if (atomic_load(&p->sleepers) > 0) {
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
  }
  run_chunks(p, 0);
  atomic_store(&p->open, 0);
  /* Wait for the workers that joined; yield now and then, as one may be waiting
   * for this very core when the machine is oversubscribed. */
  for (int k = 0; atomic_load(&p->active) > 0; k++) {
    CPU_RELAX();
    if ((k & 63) == 63)
      sched_yield();
  }
  atomic_store(&p->busy, 0);
}

void dlc__pool_release(dlc_pool *p) {
  if (p == NULL)
    return;
  if (p->started > 0) {
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int32_t k = 0; k < p->started; k++)
      pthread_join(p->workers[k].thread, NULL);
  }
  free(p->workers);
  free(p->ranges);
  pthread_cond_destroy(&p->wake);
  pthread_mutex_destroy(&p->lock);
  free(p);
}
