/* init.c — deterministic parameter initialisation. Each tensor gets its own
 * xoshiro256** stream seeded by splitmix64 from (seed, tensor index), so a
 * param's values depend only on the seed and its place in the table, not on
 * the params before it. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

typedef struct rng {
  uint64_t s[4];
} rng;

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next(rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

static void seed_rng(rng *r, uint64_t seed, int32_t index) {
  uint64_t x = seed;
  uint64_t mixed = splitmix64(&x);
  /* Mix the index through its own splitmix step so (seed, i) and (seed', i')
   * give unrelated streams. */
  uint64_t y = mixed ^ ((uint64_t)(uint32_t)index * 0xD1B54A32D192ED03ull);
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&y);
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform01(rng *r) { return (double)(next(r) >> 11) * (1.0 / 9007199254740992.0); }

static double normal01(rng *r, double *spare, int *has_spare) {
  if (*has_spare) {
    *has_spare = 0;
    return *spare;
  }
  double u1 = 1.0 - uniform01(r); /* (0, 1]: log is finite */
  double u2 = uniform01(r);
  double rad = sqrt(-2.0 * log(u1));
  double ang = 6.283185307179586476925 * u2;
  *spare = rad * sin(ang);
  *has_spare = 1;
  return rad * cos(ang);
}

static void store(void *data, int32_t dtype, int64_t i, double v, double lo,
                  double hi, int clamp) {
  switch (dtype) {
  case DLC_F32: {
    float f = (float)v;
    /* Rounding to f32 can land on the excluded upper bound of U(a, b). */
    if (clamp && (double)f >= hi && hi > lo)
      f = nextafterf((float)hi, (float)lo);
    ((float *)data)[i] = f;
    break;
  }
  case DLC_F64:
    ((double *)data)[i] = v;
    break;
  default: {
    double r = floor(v + 0.5);
    if (r > 2147483647.0) r = 2147483647.0;
    if (r < -2147483648.0) r = -2147483648.0;
    if (r != r) r = 0.0;
    ((int32_t *)data)[i] = (int32_t)r;
  }
  }
}

static void init_tensor(void *data, const dlc_tensor_desc *t, int64_t numel,
                        uint64_t seed, int32_t index) {
  size_t bytes = (size_t)numel * dlc__dtype_size(t->dtype);
  if (t->init == DLC_INIT_ZEROS) {
    memset(data, 0, bytes);
    return;
  }
  rng r;
  seed_rng(&r, seed, index);
  double spare = 0.0;
  int has_spare = 0;
  for (int64_t i = 0; i < numel; i++) {
    switch (t->init) {
    case DLC_INIT_ONES:
      store(data, t->dtype, i, 1.0, 0, 0, 0);
      break;
    case DLC_INIT_CONSTANT:
      store(data, t->dtype, i, t->init_a, 0, 0, 0);
      break;
    case DLC_INIT_UNIFORM:
      store(data, t->dtype, i, t->init_a + (t->init_b - t->init_a) * uniform01(&r),
            t->init_a, t->init_b, 1);
      break;
    default: /* DLC_INIT_NORMAL */
      store(data, t->dtype, i, t->init_a + t->init_b * normal01(&r, &spare, &has_spare),
            0, 0, 0);
      break;
    }
  }
}

void dlc__init_tensors(const dlc_program_desc *d, void *const *data, uint64_t seed) {
  for (int32_t i = 0; i < d->n_tensors; i++) {
    const dlc_tensor_desc *t = &d->tensors[i];
    if (t->role == DLC_ROLE_PARAM || t->role == DLC_ROLE_STATE)
      init_tensor(data[i], t, dlc__fixed_numel(t), seed, i);
  }
}

dlc_status dlc_tensors_init(const dlc_program_desc *desc, void *const *tensors,
                            uint64_t seed) {
  dlc_status st = dlc__check_table("dlc_tensors_init", desc, tensors, DLC_ROLE_STATE);
  if (st == DLC_OK)
    dlc__init_tensors(desc, tensors, seed);
  return st;
}
