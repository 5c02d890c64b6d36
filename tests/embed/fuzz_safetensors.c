/* A coverage-guided mutation fuzzer for the runtime's safetensors reader,
 * self-contained for toolchains without libFuzzer (GCC): built with
 * AddressSanitizer and UndefinedBehaviorSanitizer, against runtime sources
 * compiled with -fsanitize-coverage=trace-pc, whose callback below hashes
 * (previous, current) block pairs into an AFL-style edge map. An input that
 * reaches a new edge joins the corpus.
 *
 *   fuzz_safetensors [-seconds S] [-runs N] [-seed X] [-crash DIR]
 *   fuzz_safetensors FILE...        (replay inputs, e.g. a saved crash)
 *
 * Besides the sanitizers, each input checks the reader's contract: a failed
 * load leaves the params unchanged and sets a message; a successful one
 * matches a valid file. A finding writes the input to DIR/crash-<n> and
 * exits nonzero. Prints the inputs tried, corpus size, edges and crashes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dlc/runtime.h"

#if defined(__has_include)
#if __has_include(<sanitizer/common_interface_defs.h>)
#include <sanitizer/common_interface_defs.h>
#define HAVE_DEATH_CALLBACK 1
#endif
#endif

/* ---- coverage ------------------------------------------------------------ */

#define MAP_SIZE (1u << 16)
static unsigned char g_edges[MAP_SIZE]; /* this input's edges */
static unsigned char g_seen[MAP_SIZE];  /* every input's */
static uintptr_t g_prev;

void __sanitizer_cov_trace_pc(void);
void __sanitizer_cov_trace_pc(void) {
  uintptr_t pc = (uintptr_t)__builtin_return_address(0);
  uintptr_t h = (pc ^ (pc >> 16)) * 0x9E3779B1u;
  g_edges[(h ^ g_prev) & (MAP_SIZE - 1)] = 1;
  g_prev = h >> 1;
}

/* ---- the program whose params the files hold ----------------------------- */

static const int64_t d_w[] = {3, 4}, d_b[] = {4}, d_s[] = {2, 1, 3};
static const dlc_tensor_desc g_tensors[] = {
    {"fc.weight", DLC_ROLE_PARAM, DLC_F32, 2, DLC_INIT_UNIFORM, d_w, -1, 1, 0, 0, 0, 0},
    {"fc.bias", DLC_ROLE_PARAM, DLC_F64, 1, DLC_INIT_NORMAL, d_b, 0, 1, 0, 0, 0, 0},
    {"steps", DLC_ROLE_PARAM, DLC_I32, 3, DLC_INIT_ONES, d_s, 0, 0, 0, 0, 0, 0},
    {"scale", DLC_ROLE_PARAM, DLC_F32, 0, DLC_INIT_ONES, NULL, 0, 0, 0, 0, 0, 0},
};
#define N_T 4
static const dlc_program_desc g_desc = {DLC_ABI_VERSION, 0, NULL, N_T, g_tensors, 0, NULL};
static _Alignas(64) unsigned char g_memory[N_T][128];
static void *g_table[N_T];

/* ---- inputs ---------------------------------------------------------------- */

#define MAX_INPUT 4096
typedef struct input {
  unsigned char *data;
  size_t size;
} input;

static input *g_corpus;
static size_t g_n_corpus, g_cap_corpus;
static unsigned char g_cur[MAX_INPUT];
static size_t g_cur_size;
static const char *g_crash_dir = ".";
static uint64_t g_rng = 0x853c49e6748fea9bull;

static uint64_t rnd(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}
static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

/* Wall-clock seconds: CI bounds the run in real time. */
static double now(void) {
  struct timespec ts;
  timespec_get(&ts, TIME_UTC);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void save_crash(void) {
  static int n;
  char path[4096];
  snprintf(path, sizeof path, "%s/crash-%d", g_crash_dir, n++);
  FILE *f = fopen(path, "wb");
  if (f) {
    fwrite(g_cur, 1, g_cur_size, f);
    fclose(f);
  }
  fprintf(stderr, "fuzz_safetensors: input saved to %s\n", path);
}

static void add_corpus(const unsigned char *data, size_t size) {
  if (g_n_corpus == g_cap_corpus) {
    g_cap_corpus = g_cap_corpus ? 2 * g_cap_corpus : 64;
    g_corpus = (input *)realloc(g_corpus, g_cap_corpus * sizeof *g_corpus);
    if (g_corpus == NULL)
      abort();
  }
  input *in = &g_corpus[g_n_corpus++];
  in->data = (unsigned char *)malloc(size ? size : 1);
  if (in->data == NULL)
    abort();
  memcpy(in->data, data, size);
  in->size = size;
}

/* Runs the current input; returns 1 if it broke the contract. Reports
 * whether it reached a new edge in *novel. */
static int run_one(int *novel) {
  unsigned char before[N_T][128];
  memset(g_edges, 0, sizeof g_edges);
  g_prev = 0;
  for (int i = 0; i < N_T; i++)
    memset(g_memory[i], 0xA5, sizeof g_memory[i]);
  memcpy(before, g_memory, sizeof before);
  /* An exact-size copy, so ASan sees reads past the end of the input. */
  unsigned char *copy = (unsigned char *)malloc(g_cur_size ? g_cur_size : 1);
  if (copy == NULL)
    abort();
  memcpy(copy, g_cur, g_cur_size);
  dlc_status st = dlc_tensors_load_memory(&g_desc, g_table, copy, g_cur_size);
  free(copy);
  int bad = 0;
  if (st != DLC_OK && memcmp(before, g_memory, sizeof before) != 0) {
    fprintf(stderr, "fuzz_safetensors: a failed load (%s: %s) changed the params\n",
            dlc_status_name(st), dlc_status_message());
    bad = 1;
  }
  if (st != DLC_OK && dlc_status_message()[0] == '\0') {
    fprintf(stderr, "fuzz_safetensors: a failed load (%s) left no message\n",
            dlc_status_name(st));
    bad = 1;
  }
  if (st != DLC_OK && st != DLC_ERR_FORMAT && st != DLC_ERR_IO) {
    fprintf(stderr, "fuzz_safetensors: unexpected status %s: %s\n", dlc_status_name(st),
            dlc_status_message());
    bad = 1;
  }
  *novel = 0;
  for (size_t i = 0; i < MAP_SIZE; i++)
    if (g_edges[i] && !g_seen[i]) {
      g_seen[i] = 1;
      *novel = 1;
    }
  return bad;
}

/* ---- mutations -------------------------------------------------------------- */

static const char *const g_tokens[] = {
    "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u0000", "\\ud800", "\\udc00",
    "\\u00e9", "\\n", "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"",
    "\"F32\"", "\"F64\"", "\"I32\"", "\"BF16\"", "\"fc.weight\"", "\"fc.bias\"",
    "\"steps\"", "\"scale\"", "0", "1", "-1", "1.5", "1e3", "4294967296",
    "9223372036854775807", "18446744073709551616", "[0,0]", "[0,48]", "[]", "null",
    "true", " ", "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1"};
#define N_TOKENS ((int)(sizeof g_tokens / sizeof g_tokens[0]))

static void insert(size_t at, const void *src, size_t n) {
  if (g_cur_size + n > MAX_INPUT)
    n = MAX_INPUT - g_cur_size;
  memmove(g_cur + at + n, g_cur + at, g_cur_size - at);
  memcpy(g_cur + at, src, n);
  g_cur_size += n;
}

static void mutate(void) {
  int rounds = 1 + (int)below(4);
  for (int r = 0; r < rounds; r++) {
    size_t at = below(g_cur_size + 1);
    switch (below(10)) {
    case 0: /* flip a bit */
      if (g_cur_size)
        g_cur[below(g_cur_size)] ^= (unsigned char)(1u << below(8));
      break;
    case 1: /* a random byte */
      if (g_cur_size)
        g_cur[below(g_cur_size)] = (unsigned char)rnd();
      break;
    case 2:
    case 3: { /* a token */
      const char *t = g_tokens[below(N_TOKENS)];
      insert(at, t, strlen(t));
      break;
    }
    case 4: { /* delete a range */
      size_t n = below(g_cur_size - (at < g_cur_size ? at : g_cur_size) + 1);
      if (at < g_cur_size) {
        memmove(g_cur + at, g_cur + at + n, g_cur_size - at - n);
        g_cur_size -= n;
      }
      break;
    }
    case 5: { /* duplicate a range */
      if (g_cur_size == 0)
        break;
      size_t from = below(g_cur_size), n = 1 + below(16);
      unsigned char tmp[16];
      if (from + n > g_cur_size)
        n = g_cur_size - from;
      memcpy(tmp, g_cur + from, n);
      insert(at, tmp, n);
      break;
    }
    case 6: /* truncate */
      g_cur_size = below(g_cur_size + 1);
      break;
    case 7: { /* the header length: random, off by a little, or the rest */
      if (g_cur_size < 8)
        break;
      uint64_t v = 0;
      for (int i = 7; i >= 0; i--)
        v = (v << 8) | g_cur[i];
      switch (below(3)) {
      case 0: v = rnd() >> below(64); break;
      case 1: v += (uint64_t)(int64_t)((int)below(17) - 8); break;
      default: v = g_cur_size - 8; break;
      }
      for (int i = 0; i < 8; i++)
        g_cur[i] = (unsigned char)(v >> (8 * i));
      break;
    }
    case 8: { /* a digit changed inside the header */
      for (size_t k = 0; k < 8 && g_cur_size > 8; k++) {
        size_t i = 8 + below(g_cur_size - 8);
        if (g_cur[i] >= '0' && g_cur[i] <= '9') {
          g_cur[i] = (unsigned char)('0' + below(10));
          break;
        }
      }
      break;
    }
    default: { /* splice another corpus input's tail */
      const input *o = &g_corpus[below(g_n_corpus)];
      size_t from = below(o->size + 1);
      g_cur_size = at;
      insert(at, o->data + from, o->size - from);
      break;
    }
    }
  }
}

/* ---- seeds -------------------------------------------------------------------- */

static void seed_corpus(const char *dir) {
  /* A valid file, written by the runtime itself. */
  char path[4096];
  snprintf(path, sizeof path, "%s/fuzz-seed.safetensors", dir);
  if (dlc_tensors_init(&g_desc, g_table, 3) != DLC_OK ||
      dlc_tensors_save(&g_desc, g_table, path) != DLC_OK) {
    fprintf(stderr, "fuzz_safetensors: cannot write the seed: %s\n", dlc_status_message());
    exit(2);
  }
  FILE *f = fopen(path, "rb");
  g_cur_size = f ? fread(g_cur, 1, MAX_INPUT, f) : 0;
  if (f)
    fclose(f);
  remove(path);
  add_corpus(g_cur, g_cur_size);
  static const char *const texts[] = {
      "{}", "{\"__metadata__\":{\"a\":\"b\"}}",
      "{\"scale\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}",
      "{\"x\\u00e9\\n\":{\"shape\":[1],\"dtype\":\"I32\",\"data_offsets\":[0,4],\"e\":[1,{}]}}"};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    size_t n = strlen(texts[i]);
    unsigned char buf[256] = {0};
    for (int k = 0; k < 8; k++)
      buf[k] = (unsigned char)((uint64_t)n >> (8 * k));
    memcpy(buf + 8, texts[i], n);
    add_corpus(buf, 8 + n + 16);
  }
}

static int replay(int argc, char **argv) {
  int bad = 0;
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    if (f == NULL) {
      fprintf(stderr, "cannot open %s\n", argv[i]);
      return 2;
    }
    g_cur_size = fread(g_cur, 1, MAX_INPUT, f);
    fclose(f);
    int novel;
    bad |= run_one(&novel);
    printf("%s: %s\n", argv[i], dlc_status_message());
  }
  return bad;
}

int main(int argc, char **argv) {
  double seconds = 10;
  long long max_runs = -1;
  for (int i = 0; i < N_T; i++)
    g_table[i] = g_memory[i];
  int i = 1;
  for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
    if (strcmp(argv[i], "-seconds") == 0) seconds = atof(argv[i + 1]);
    else if (strcmp(argv[i], "-runs") == 0) max_runs = atoll(argv[i + 1]);
    else if (strcmp(argv[i], "-seed") == 0) g_rng = strtoull(argv[i + 1], NULL, 0) | 1;
    else if (strcmp(argv[i], "-crash") == 0) g_crash_dir = argv[i + 1];
    else break;
  }
  if (i < argc)
    return replay(argc - i + 1, argv + i - 1);
#ifdef HAVE_DEATH_CALLBACK
  __sanitizer_set_death_callback(save_crash);
#endif
  seed_corpus(g_crash_dir);
  long long runs = 0, crashes = 0;
  for (size_t k = 0; k < g_n_corpus; k++) {
    memcpy(g_cur, g_corpus[k].data, g_corpus[k].size);
    g_cur_size = g_corpus[k].size;
    int novel;
    crashes += run_one(&novel);
    runs++;
  }
  double start = now();
  while ((max_runs < 0 || runs < max_runs) && crashes == 0) {
    if ((runs & 255) == 0 && now() - start >= seconds)
      break;
    const input *base = &g_corpus[below(g_n_corpus)];
    memcpy(g_cur, base->data, base->size);
    g_cur_size = base->size;
    mutate();
    int novel;
    if (run_one(&novel)) {
      save_crash();
      crashes++;
    } else if (novel) {
      add_corpus(g_cur, g_cur_size);
    }
    runs++;
  }
  double t = now() - start;
  size_t edges = 0;
  for (size_t k = 0; k < MAP_SIZE; k++)
    edges += g_seen[k];
  printf("fuzz_safetensors: %lld inputs in %.1f s (%.0f/s), corpus %zu, %zu edges, "
         "%lld crashes\n",
         runs, t, t > 0 ? (double)runs / t : 0.0, g_n_corpus, edges, crashes);
  for (size_t k = 0; k < g_n_corpus; k++)
    free(g_corpus[k].data);
  free(g_corpus);
  return crashes != 0;
}
