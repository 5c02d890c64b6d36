/* safetensors.c — saving and loading params in the safetensors format:
 * an 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
 *  "__metadata__": {..}}, then the data, offsets relative to its start.
 *
 * The reader takes untrusted files: every length and offset is checked, the
 * JSON parser bounds its nesting, and nothing reaches the session until the
 * whole file has been read and checked. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "internal.h"

/* The limit the reference implementation uses. */
#define MAX_HEADER_BYTES 100000000ull
#define MAX_JSON_DEPTH 64

static int host_is_little_endian(void) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b == 1;
}

/* ---- dtypes --------------------------------------------------------------- */

typedef struct st_dtype {
  const char *name;
  int32_t size;
  int32_t dlc; /* the dlc_dtype, or -1 for dtypes dlc does not have */
} st_dtype;

static const st_dtype st_dtypes[] = {
    {"BOOL", 1, -1},    {"U8", 1, -1},      {"I8", 1, -1},   {"F8_E5M2", 1, -1},
    {"F8_E4M3", 1, -1}, {"I16", 2, -1},     {"U16", 2, -1},  {"F16", 2, -1},
    {"BF16", 2, -1},    {"I32", 4, DLC_I32}, {"U32", 4, -1}, {"F32", 4, DLC_F32},
    {"F64", 8, DLC_F64}, {"I64", 8, -1},    {"U64", 8, -1},
};
#define N_ST_DTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

/* PyTorch stores counters (BatchNorm's num_batches_tracked) as I64, where
 * dlc has i32: such a tensor loads when every value fits. */
static int widened(int st_dtype, int32_t dlc_dtype) {
  return strcmp(st_dtypes[st_dtype].name, "I64") == 0 && dlc_dtype == DLC_I32;
}

static const char *st_name_of(int32_t dlc_dtype) {
  for (int i = 0; i < N_ST_DTYPES; i++)
    if (st_dtypes[i].dlc == dlc_dtype)
      return st_dtypes[i].name;
  return "?";
}

/* ---- a growable byte buffer ---------------------------------------------- */

typedef struct buf {
  char *p;
  size_t len, cap;
  int oom;
} buf;

static void buf_put(buf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = (char *)realloc(b->p, cap);
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_str(buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_fmt_u64(buf *b, uint64_t v) {
  char tmp[32];
  snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
  buf_str(b, tmp);
}

static void buf_json_string(buf *b, const char *s) {
  buf_str(b, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      buf_put(b, esc, 2);
    } else if (c < 0x20) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", c);
      buf_str(b, esc);
    } else {
      buf_put(b, (const char *)&c, 1);
    }
  }
  buf_str(b, "\"");
}

/* Bytes of a PARAM (fixed shape, validated: no overflow). */
static size_t param_bytes(const dlc_tensor_desc *t) {
  return (size_t)dlc__fixed_numel(t) * dlc__dtype_size(t->dtype);
}

/* ---- save ------------------------------------------------------------------ */

static void put_le64(unsigned char *out, uint64_t v) {
  for (int i = 0; i < 8; i++)
    out[i] = (unsigned char)(v >> (8 * i));
}

/* Writes the PARAMs, and the STATEs too when `states` (a checkpoint). */
static dlc_status save(const dlc_program_desc *d, void *const *data, const char *path,
                       int states) {
  if (!host_is_little_endian())
    return dlc__fail(DLC_ERR_UNAVAILABLE,
                     "safetensors files are little-endian; this host is not");
  /* Params use PyTorch's names and layouts, so say so for tools that check. */
  buf h = {NULL, 0, 0, 0};
  buf_str(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
  /* Widest dtypes first, so that every tensor is aligned to its element size
   * when the data starts 8-aligned (as the reference writer does). */
  int32_t *order = (int32_t *)malloc((size_t)(d->n_tensors ? d->n_tensors : 1) *
                                     sizeof(int32_t));
  if (order == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory saving '%s'", path);
  int32_t n = 0;
  for (size_t size = 8; size >= 4; size /= 2)
    for (int32_t i = 0; i < d->n_tensors; i++)
      if ((d->tensors[i].role == DLC_ROLE_PARAM || (states && d->tensors[i].role == DLC_ROLE_STATE)) &&
          dlc__dtype_size(d->tensors[i].dtype) == size)
        order[n++] = i;
  uint64_t offset = 0;
  for (int32_t o = 0; o < n; o++) {
    int32_t i = order[o];
    const dlc_tensor_desc *t = &d->tensors[i];
    buf_str(&h, ",");
    buf_json_string(&h, t->name);
    buf_str(&h, ":{\"dtype\":\"");
    buf_str(&h, st_name_of(t->dtype));
    buf_str(&h, "\",\"shape\":[");
    for (int32_t k = 0; k < t->rank; k++) {
      if (k)
        buf_str(&h, ",");
      buf_fmt_u64(&h, (uint64_t)t->dims[k]);
    }
    buf_str(&h, "],\"data_offsets\":[");
    buf_fmt_u64(&h, offset);
    buf_str(&h, ",");
    offset += param_bytes(t);
    buf_fmt_u64(&h, offset);
    buf_str(&h, "]}");
  }
  buf_str(&h, "}");
  while (h.len % 8 != 0) /* align the data, as the reference writer does */
    buf_str(&h, " ");
  if (h.oom) {
    free(h.p);
    free(order);
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory saving '%s'", path);
  }

  size_t plen = strlen(path);
  char *tmp = (char *)malloc(plen + 5);
  if (tmp == NULL) {
    free(h.p);
    free(order);
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory saving '%s'", path);
  }
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp", 5);
  FILE *f = fopen(tmp, "wb");
  if (f == NULL) {
    dlc_status st = dlc__fail(DLC_ERR_IO, "cannot write weights file '%s': %s", path,
                              strerror(errno));
    free(h.p);
    free(tmp);
    free(order);
    return st;
  }
  unsigned char len8[8];
  put_le64(len8, (uint64_t)h.len);
  int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(h.p, 1, h.len, f) == h.len;
  for (int32_t o = 0; ok && o < n; o++) {
    size_t bytes = param_bytes(&d->tensors[order[o]]);
    ok = bytes == 0 || fwrite(data[order[o]], 1, bytes, f) == bytes;
  }
  int err = errno;
  if (fclose(f) != 0 && ok) {
    ok = 0;
    err = errno;
  }
  if (ok && rename(tmp, path) != 0) {
    ok = 0;
    err = errno;
  }
  free(h.p);
  free(order);
  if (!ok) {
    remove(tmp);
    free(tmp);
    return dlc__fail(DLC_ERR_IO, "cannot write weights file '%s': %s", path,
                     strerror(err));
  }
  free(tmp);
  return DLC_OK;
}

static dlc_status session_save(const char *fn, const dlc_session *s, const char *path,
                               int states) {
  if (s == NULL || path == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT, "%s: session and path must not be NULL", fn);
  dlc__session_lock(s);
  dlc_status st = dlc__cuda_host_access(s);
  if (st == DLC_OK)
    st = save(s->desc, s->data, path, states);
  dlc__session_unlock(s);
  return st;
}

dlc_status dlc_session_save(const dlc_session *s, const char *path) {
  return session_save("dlc_session_save", s, path, 0);
}

dlc_status dlc_session_save_checkpoint(const dlc_session *s, const char *path) {
  return session_save("dlc_session_save_checkpoint", s, path, 1);
}

dlc_status dlc_tensors_save(const dlc_program_desc *desc, void *const *tensors,
                            const char *path) {
  dlc_status st = dlc__check_table("dlc_tensors_save", desc, tensors, DLC_ROLE_PARAM);
  if (st == DLC_OK && path == NULL)
    st = dlc__fail(DLC_ERR_INVALID_ARGUMENT, "dlc_tensors_save: path must not be NULL");
  return st == DLC_OK ? save(desc, tensors, path, 0) : st;
}

/* ---- a small JSON reader for the header ------------------------------------ */

typedef struct jp {
  const char *start, *p, *end;
  char err[256]; /* the first error */
} jp;

static int jfail(jp *j, const char *what) {
  if (j->err[0] == '\0')
    snprintf(j->err, sizeof j->err, "%s at byte %lld of the header", what,
             (long long)(j->p - j->start));
  return 0;
}

static void jws(jp *j) {
  while (j->p < j->end &&
         (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
    j->p++;
}

static int jlit(jp *j, char c) {
  jws(j);
  if (j->p < j->end && *j->p == c) {
    j->p++;
    return 1;
  }
  return 0;
}

static int hex4(const char *p, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

static void put_utf8(char **o, unsigned cp) {
  unsigned char *u = (unsigned char *)*o;
  if (cp < 0x80) {
    *u++ = (unsigned char)cp;
  } else if (cp < 0x800) {
    *u++ = (unsigned char)(0xC0 | (cp >> 6));
    *u++ = (unsigned char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *u++ = (unsigned char)(0xE0 | (cp >> 12));
    *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    *u++ = (unsigned char)(0x80 | (cp & 0x3F));
  } else {
    *u++ = (unsigned char)(0xF0 | (cp >> 18));
    *u++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    *u++ = (unsigned char)(0x80 | (cp & 0x3F));
  }
  *o = (char *)u;
}

/* Parses a string; if `out` is not NULL, stores a malloc'd, NUL-terminated
 * copy with escapes decoded (strings holding NUL are rejected then). */
static int jstring(jp *j, char **out) {
  jws(j);
  if (j->p >= j->end || *j->p != '"')
    return jfail(j, "expected a string");
  j->p++;
  const char *start = j->p;
  /* Decoded UTF-8 is never longer than its escaped source. */
  char *dst = NULL, *o = NULL;
  if (out != NULL) {
    const char *q = start;
    while (q < j->end && *q != '"')
      q += (*q == '\\' && q + 1 < j->end) ? 2 : 1;
    dst = o = (char *)malloc((size_t)(q - start) + 1);
    if (dst == NULL)
      return jfail(j, "out of memory");
  }
  while (1) {
    if (j->p >= j->end) {
      free(dst);
      return jfail(j, "unterminated string");
    }
    unsigned char c = (unsigned char)*j->p++;
    if (c == '"')
      break;
    if (c < 0x20) {
      free(dst);
      return jfail(j, "control character in a string");
    }
    if (c != '\\') {
      if (o) *o++ = (char)c;
      continue;
    }
    if (j->p >= j->end) {
      free(dst);
      return jfail(j, "unterminated string");
    }
    char e = *j->p++;
    unsigned cp;
    switch (e) {
    case '"': cp = '"'; break;
    case '\\': cp = '\\'; break;
    case '/': cp = '/'; break;
    case 'b': cp = '\b'; break;
    case 'f': cp = '\f'; break;
    case 'n': cp = '\n'; break;
    case 'r': cp = '\r'; break;
    case 't': cp = '\t'; break;
    case 'u':
      if (j->end - j->p < 4 || !hex4(j->p, &cp)) {
        free(dst);
        return jfail(j, "bad \\u escape");
      }
      j->p += 4;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        unsigned lo;
        if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' ||
            !hex4(j->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
          free(dst);
          return jfail(j, "unpaired surrogate in a \\u escape");
        }
        j->p += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        free(dst);
        return jfail(j, "unpaired surrogate in a \\u escape");
      }
      if (cp == 0 && o) {
        free(dst);
        return jfail(j, "a NUL character in a name");
      }
      break;
    default:
      free(dst);
      return jfail(j, "bad escape in a string");
    }
    if (o) put_utf8(&o, cp);
  }
  if (out) {
    *o = '\0';
    *out = dst;
  }
  return 1;
}

/* A non-negative integer below 2^63, as sizes and offsets must be. */
static int juint(jp *j, uint64_t *out) {
  jws(j);
  if (j->p >= j->end || *j->p < '0' || *j->p > '9')
    return jfail(j, "expected a non-negative integer");
  uint64_t v = 0;
  while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
    unsigned dgt = (unsigned)(*j->p++ - '0');
    if (v > ((uint64_t)INT64_MAX - dgt) / 10)
      return jfail(j, "integer too large");
    v = v * 10 + dgt;
  }
  if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
    return jfail(j, "expected an integer, found a fraction");
  *out = v;
  return 1;
}

static int jskip(jp *j, int depth);

static int jskip_number(jp *j) {
  const char *s = j->p;
  if (j->p < j->end && *j->p == '-') j->p++;
  while (j->p < j->end && ((*j->p >= '0' && *j->p <= '9') || *j->p == '.' ||
                           *j->p == 'e' || *j->p == 'E' || *j->p == '+' || *j->p == '-'))
    j->p++;
  return j->p > s ? 1 : jfail(j, "expected a value");
}

static int jskip_word(jp *j, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n) != 0)
    return jfail(j, "expected a value");
  j->p += n;
  return 1;
}

/* Skips any value, nesting at most MAX_JSON_DEPTH deep. */
static int jskip(jp *j, int depth) {
  if (depth > MAX_JSON_DEPTH)
    return jfail(j, "nesting too deep");
  jws(j);
  if (j->p >= j->end)
    return jfail(j, "expected a value");
  char c = *j->p;
  if (c == '"')
    return jstring(j, NULL);
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->p++;
    if (jlit(j, close))
      return 1;
    do {
      if (c == '{' && !(jstring(j, NULL) && (jlit(j, ':') || jfail(j, "expected ':'"))))
        return 0;
      if (!jskip(j, depth + 1))
        return 0;
    } while (jlit(j, ','));
    return jlit(j, close) || jfail(j, c == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
  }
  if (c == 't') return jskip_word(j, "true");
  if (c == 'f') return jskip_word(j, "false");
  if (c == 'n') return jskip_word(j, "null");
  return jskip_number(j);
}

/* ---- the header's tensors ------------------------------------------------- */

typedef struct st_entry {
  char *name;
  int dtype;          /* index into st_dtypes */
  int32_t rank;       /* the file's rank; dims past DLC_MAX_RANK are not kept */
  int64_t dims[DLC_MAX_RANK];
  uint64_t begin, end;
  uint64_t bytes;     /* what its dtype and shape take */
} st_entry;

typedef struct st_header {
  st_entry *v;
  size_t n, cap;
} st_header;

static void header_free(st_header *h) {
  for (size_t i = 0; i < h->n; i++)
    free(h->v[i].name);
  free(h->v);
  h->v = NULL;
  h->n = h->cap = 0;
}

/* {"dtype": .., "shape": [..], "data_offsets": [b, e]}; other keys skipped.
 * Error messages name the tensor. */
static int parse_info(jp *j, st_entry *t, uint64_t *numel) {
  int have_dtype = 0, have_shape = 0, have_offsets = 0;
  *numel = 1;
  if (!jlit(j, '{'))
    return jfail(j, "expected an object describing the tensor");
  if (jlit(j, '}'))
    return jfail(j, "missing \"dtype\"");
  do {
    char *key = NULL;
    if (!jstring(j, &key))
      return 0;
    if (!(jlit(j, ':') || jfail(j, "expected ':'"))) {
      free(key);
      return 0;
    }
    int ok = 1;
    if (strcmp(key, "dtype") == 0) {
      char *dt = NULL;
      ok = !have_dtype ? jstring(j, &dt) : jfail(j, "\"dtype\" given twice");
      if (ok) {
        t->dtype = -1;
        for (int i = 0; i < N_ST_DTYPES; i++)
          if (strcmp(dt, st_dtypes[i].name) == 0)
            t->dtype = i;
        if (t->dtype < 0) {
          snprintf(j->err, sizeof j->err, "unknown dtype '%.40s'", dt);
          ok = 0;
        }
        free(dt);
      }
      have_dtype = 1;
    } else if (strcmp(key, "shape") == 0) {
      ok = !have_shape ? (jlit(j, '[') || jfail(j, "\"shape\" must be a list"))
                       : jfail(j, "\"shape\" given twice");
      t->rank = 0;
      if (ok && !jlit(j, ']')) {
        do {
          uint64_t dim;
          ok = juint(j, &dim);
          if (ok && t->rank < DLC_MAX_RANK)
            t->dims[t->rank] = (int64_t)dim;
          t->rank++;
          if (ok && dim != 0 && *numel > (uint64_t)INT64_MAX / dim)
            ok = jfail(j, "shape too large");
          if (ok)
            *numel *= dim;
        } while (ok && jlit(j, ','));
        ok = ok && (jlit(j, ']') || jfail(j, "expected ',' or ']' in \"shape\""));
      }
      have_shape = 1;
    } else if (strcmp(key, "data_offsets") == 0) {
      ok = !have_offsets ? (jlit(j, '[') || jfail(j, "\"data_offsets\" must be a list"))
                         : jfail(j, "\"data_offsets\" given twice");
      ok = ok && juint(j, &t->begin) &&
           (jlit(j, ',') || jfail(j, "\"data_offsets\" must hold two integers")) &&
           juint(j, &t->end) &&
           (jlit(j, ']') || jfail(j, "\"data_offsets\" must hold two integers"));
      have_offsets = 1;
    } else {
      ok = jskip(j, 2);
    }
    free(key);
    if (!ok)
      return 0;
  } while (jlit(j, ','));
  if (!jlit(j, '}'))
    return jfail(j, "expected ',' or '}'");
  if (!have_dtype) return jfail(j, "missing \"dtype\"");
  if (!have_shape) return jfail(j, "missing \"shape\"");
  if (!have_offsets) return jfail(j, "missing \"data_offsets\"");
  return 1;
}

static int cmp_begin(const void *a, const void *b) {
  const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1
       : x->end < y->end ? -1 : x->end > y->end;
}

/* Parses the header; the caller frees `h`, also on failure. */
static dlc_status parse_header(const char *path, const char *text, size_t len,
                               st_header *h) {
  jp j;
  j.start = j.p = text;
  j.end = text + len;
  j.err[0] = '\0';
  if (!jlit(&j, '{'))
    return dlc__fail(DLC_ERR_FORMAT,
                     "weights file '%s' is not safetensors: its header is not a "
                     "JSON object", path);
  int ok = 1;
  if (!jlit(&j, '}')) {
    do {
      char *name = NULL;
      ok = jstring(&j, &name) && (jlit(&j, ':') || jfail(&j, "expected ':'"));
      if (ok && strcmp(name, "__metadata__") == 0) {
        free(name);
        if (!(ok = jskip(&j, 1)))
          break;
        continue;
      }
      for (size_t i = 0; ok && i < h->n; i++)
        if (strcmp(h->v[i].name, name) == 0) {
          snprintf(j.err, sizeof j.err, "tensor '%.100s' appears twice", name);
          ok = 0;
        }
      if (ok && h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 16;
        st_entry *v = (st_entry *)realloc(h->v, cap * sizeof *v);
        if (v == NULL) {
          free(name);
          return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
        }
        h->v = v;
        h->cap = cap;
      }
      if (!ok) {
        free(name);
        break;
      }
      st_entry *t = &h->v[h->n++];
      memset(t, 0, sizeof *t);
      t->name = name;
      uint64_t numel;
      if (!parse_info(&j, t, &numel)) {
        char why[256];
        memcpy(why, j.err, sizeof why);
        snprintf(j.err, sizeof j.err, "tensor '%.100s': %.140s", name, why);
        ok = 0;
        break;
      }
      uint64_t size = (uint64_t)st_dtypes[t->dtype].size;
      if (numel != 0 && size > (uint64_t)INT64_MAX / numel) {
        snprintf(j.err, sizeof j.err, "tensor '%.100s' is too large", name);
        ok = 0;
        break;
      }
      t->bytes = numel * size;
    } while (jlit(&j, ','));
  }
  if (ok && !jlit(&j, '}'))
    ok = jfail(&j, "expected ',' or '}'");
  jws(&j);
  if (ok && j.p != j.end)
    ok = jfail(&j, "unexpected data after the header object");
  if (!ok)
    return dlc__fail(DLC_ERR_FORMAT, "weights file '%s': malformed header: %s", path,
                     j.err);
  return DLC_OK;
}

/* Checks every tensor's offsets against its size and the data region, after
 * match_params (a tensor in another dtype is reported as that); overlapping
 * tensors are rejected. */
static dlc_status check_offsets(const char *path, const st_header *h, uint64_t data_len) {
  for (size_t i = 0; i < h->n; i++) {
    const st_entry *t = &h->v[i];
    if (t->begin > t->end || t->end > data_len || t->end - t->begin != t->bytes)
      return dlc__fail(DLC_ERR_FORMAT,
                       "weights file '%s': malformed header: tensor '%s' has "
                       "data_offsets [%llu, %llu], which do not hold its %llu bytes "
                       "within the data section of %llu bytes",
                       path, t->name, (unsigned long long)t->begin,
                       (unsigned long long)t->end, (unsigned long long)t->bytes,
                       (unsigned long long)data_len);
  }
  if (h->n > 1) {
    st_entry **order = (st_entry **)malloc(h->n * sizeof *order);
    if (order == NULL)
      return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
    for (size_t i = 0; i < h->n; i++)
      order[i] = &h->v[i];
    qsort(order, h->n, sizeof *order, cmp_begin);
    for (size_t i = 1; i < h->n; i++)
      if (order[i]->begin < order[i - 1]->end) {
        dlc_status st = dlc__fail(DLC_ERR_FORMAT,
                                  "weights file '%s': tensors '%s' and '%s' overlap",
                                  path, order[i - 1]->name, order[i]->name);
        free(order);
        return st;
      }
    free(order);
  }
  return DLC_OK;
}

/* Checks the header's tensors are exactly the program's params, plus any of
 * its STATEs when `states` (a checkpoint's); `partial`: any of them
 * (param_of -1 for a tensor the program lacks, to be ignored). */
static dlc_status match_params(const char *path, const dlc_program_desc *d,
                               const st_header *h, int32_t *param_of, int partial,
                               int states) {
  for (size_t i = 0; i < h->n; i++) {
    const st_entry *t = &h->v[i];
    int32_t p = dlc__find_param(d, t->name);
    if (p < 0 && states)
      p = dlc__find_state(d, t->name);
    param_of[i] = p;
    if (p < 0 && partial)
      continue;
    if (p < 0) {
      dlc_sb sb;
      dlc__sb_init(&sb);
      int n = 0;
      for (int32_t k = 0; k < d->n_tensors; k++)
        if (d->tensors[k].role == DLC_ROLE_PARAM)
          dlc__sb_printf(&sb, "%s%s", n++ ? ", " : "", d->tensors[k].name);
      return dlc__fail(DLC_ERR_FORMAT,
                       "weights file '%s': tensor '%s' is not a param of the "
                       "program; its params are: %s",
                       path, t->name, n ? sb.buf : "(none)");
    }
    const dlc_tensor_desc *pd = &d->tensors[p];
    if (st_dtypes[t->dtype].dlc != pd->dtype && !widened(t->dtype, pd->dtype))
      return dlc__fail(DLC_ERR_FORMAT,
                       "weights file '%s': tensor '%s' has dtype %s, the program "
                       "expects %s (%s); convert it before saving",
                       path, t->name, st_dtypes[t->dtype].name, st_name_of(pd->dtype),
                       dlc__dtype_name(pd->dtype));
    int same = t->rank == pd->rank;
    for (int32_t k = 0; same && k < pd->rank; k++)
      same = t->dims[k] == pd->dims[k];
    if (!same) {
      dlc_sb got, want;
      dlc__sb_init(&got);
      dlc__sb_init(&want);
      if (t->rank <= DLC_MAX_RANK)
        dlc__sb_shape(&got, t->rank, t->dims);
      else
        dlc__sb_printf(&got, "of rank %d", (int)t->rank);
      dlc__sb_decl_shape(&want, d, pd);
      return dlc__fail(DLC_ERR_FORMAT,
                       "weights file '%s': tensor '%s' has shape %s, the program "
                       "expects %s",
                       path, t->name, got.buf, want.buf);
    }
  }
  for (int32_t k = 0; !partial && k < d->n_tensors; k++) {
    if (d->tensors[k].role != DLC_ROLE_PARAM)
      continue;
    size_t i = 0;
    while (i < h->n && param_of[i] != k)
      i++;
    if (i == h->n)
      return dlc__fail(DLC_ERR_FORMAT, "weights file '%s' has no tensor '%s'", path,
                       d->tensors[k].name);
  }
  return DLC_OK;
}

/* Narrows the `n` I64 values at p to i32 in place (see widened); returns
 * the index of the first that does not fit, or n. */
static uint64_t narrow_i64(unsigned char *p, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    int64_t v;
    memcpy(&v, p + 8 * i, 8);
    if (v < INT32_MIN || v > INT32_MAX)
      return i;
    int32_t w = (int32_t)v;
    memcpy(p + 4 * i, &w, 4); /* behind what is still to be read */
  }
  return n;
}

static int read_at(FILE *f, uint64_t offset, void *dst, size_t n) {
  if (n == 0)
    return 1;
  if (fseeko(f, (off_t)offset, SEEK_SET) != 0)
    return 0;
  return fread(dst, 1, n, f) == n;
}

/* What a load allocates, freed by dlc_session_load whatever happens; and
 * how it loads (see dlc_session_load_partial). */
typedef struct load_state {
  int partial;
  int states;     /* the file may hold STATEs of the program too */
  uint8_t *found; /* NULL, or one flag per tensor of the table */
  FILE *f;
  char *text;
  st_header h;
  int32_t *param_of;
  size_t *stage_off;
  unsigned char *staging;
} load_state;

static dlc_status load(const dlc_program_desc *d, void *const *data, const char *path,
                       load_state *ls) {
  FILE *f = ls->f;
  unsigned char len8[8];
  off_t fsize;
  if (fseeko(f, 0, SEEK_END) != 0 || (fsize = ftello(f)) < 0 ||
      fseeko(f, 0, SEEK_SET) != 0)
    return dlc__fail(DLC_ERR_IO, "cannot read weights file '%s': %s", path,
                     strerror(errno));
  if (fsize < 8 || fread(len8, 1, 8, f) != 8)
    return dlc__fail(DLC_ERR_FORMAT,
                     "weights file '%s' is truncated: it has %lld bytes, fewer "
                     "than the 8 of a safetensors header length",
                     path, (long long)fsize);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = (hlen << 8) | len8[i];
  if (hlen > (uint64_t)fsize - 8 || hlen > MAX_HEADER_BYTES)
    return dlc__fail(DLC_ERR_FORMAT,
                     "weights file '%s' is not safetensors or is truncated: its "
                     "header claims %llu bytes, but the file has %lld",
                     path, (unsigned long long)hlen, (long long)fsize);
  ls->text = (char *)malloc((size_t)hlen + 1);
  if (ls->text == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
  if (fread(ls->text, 1, (size_t)hlen, f) != (size_t)hlen)
    return dlc__fail(DLC_ERR_IO, "cannot read weights file '%s'", path);
  ls->text[hlen] = '\0';
  uint64_t data_start = 8 + hlen;
  dlc_status st = parse_header(path, ls->text, (size_t)hlen, &ls->h);
  if (st != DLC_OK)
    return st;
  const st_header *h = &ls->h;
  ls->param_of = (int32_t *)malloc((h->n ? h->n : 1) * sizeof(int32_t));
  ls->stage_off = (size_t *)malloc((h->n ? h->n : 1) * sizeof(size_t));
  if (ls->param_of == NULL || ls->stage_off == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
  st = match_params(path, d, h, ls->param_of, ls->partial, ls->states);
  if (st == DLC_OK)
    st = check_offsets(path, h, (uint64_t)fsize - data_start);
  if (st != DLC_OK)
    return st;
  /* Staged as in the file, ignored tensors left out; tensors do not overlap,
   * so this fits in it. */
  size_t total = 0;
  for (size_t i = 0; i < h->n; i++) {
    ls->stage_off[i] = total;
    if (ls->param_of[i] >= 0)
      total += (size_t)h->v[i].bytes;
  }
  ls->staging = (unsigned char *)malloc(total ? total : 1);
  if (ls->staging == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
  for (size_t i = 0; i < h->n; i++) {
    const st_entry *t = &h->v[i];
    unsigned char *at = ls->staging + ls->stage_off[i];
    if (ls->param_of[i] < 0)
      continue;
    if (!read_at(f, data_start + t->begin, at, (size_t)t->bytes))
      return dlc__fail(DLC_ERR_IO, "cannot read tensor '%s' from weights file '%s'",
                       t->name, path);
    uint64_t n = t->bytes / 8, bad;
    if (widened(t->dtype, d->tensors[ls->param_of[i]].dtype) &&
        (bad = narrow_i64(at, n)) < n) {
      int64_t v;
      memcpy(&v, at + 8 * bad, 8);
      return dlc__fail(DLC_ERR_FORMAT,
                       "weights file '%s': tensor '%s' (I64) holds %lld at element "
                       "%llu, which does not fit the program's i32",
                       path, t->name, (long long)v, (unsigned long long)bad);
    }
  }
  /* Everything is read and checked: commit. */
  if (ls->found != NULL)
    memset(ls->found, 0, (size_t)d->n_tensors);
  for (size_t i = 0; i < h->n; i++) {
    if (ls->param_of[i] < 0)
      continue;
    size_t bytes = param_bytes(&d->tensors[ls->param_of[i]]);
    if (bytes > 0)
      memcpy(data[ls->param_of[i]], ls->staging + ls->stage_off[i], bytes);
    if (ls->found != NULL)
      ls->found[ls->param_of[i]] = 1;
  }
  return DLC_OK;
}

/* Reads params from `f` (closed here) into `data`; `path` names it in
 * messages; `partial` and `found` as in dlc_session_load_partial; `states`:
 * the STATEs a checkpoint holds are read too. */
static dlc_status load_file(const dlc_program_desc *d, void *const *data, FILE *f,
                            const char *path, int partial, int states, uint8_t *found) {
  if (!host_is_little_endian()) {
    fclose(f);
    return dlc__fail(DLC_ERR_UNAVAILABLE,
                     "safetensors files are little-endian; this host is not");
  }
  load_state ls;
  memset(&ls, 0, sizeof ls);
  ls.partial = partial;
  ls.states = states;
  ls.found = found;
  ls.f = f;
  dlc_status st = load(d, data, path, &ls);
  fclose(ls.f);
  free(ls.text);
  header_free(&ls.h);
  free(ls.param_of);
  free(ls.stage_off);
  free(ls.staging);
  return st;
}

static dlc_status open_and_load(const dlc_program_desc *d, void *const *data,
                                const char *path, int partial, int states,
                                uint8_t *found) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    if (errno == ENOENT)
      return dlc__fail(DLC_ERR_NOT_FOUND, "weights file '%s' not found", path);
    return dlc__fail(DLC_ERR_IO, "cannot open weights file '%s': %s", path,
                     strerror(errno));
  }
  /* fopen opens a directory for reading; its size reads as INT64_MAX. */
  struct stat sb;
  if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
    fclose(f);
    return dlc__fail(DLC_ERR_IO, "weights file '%s' is a directory", path);
  }
  return load_file(d, data, f, path, partial, states, found);
}

static dlc_status session_load(const char *fn, dlc_session *s, const char *path,
                               int partial, uint8_t *found) {
  if (s == NULL || path == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT, "%s: session and path must not be NULL",
                     fn);
  dlc__session_lock(s);
  dlc_status st = dlc__cuda_host_access(s);
  if (st == DLC_OK)
    st = open_and_load(s->desc, s->data, path, partial, 1, found);
  dlc__session_unlock(s);
  return st;
}

dlc_status dlc_session_load(dlc_session *s, const char *path) {
  return session_load("dlc_session_load", s, path, 0, NULL);
}

dlc_status dlc_session_load_partial(dlc_session *s, const char *path, int32_t n_found,
                                    uint8_t *found) {
  if (s != NULL && found != NULL && n_found < s->desc->n_tensors)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_load_partial: found has %d entries, fewer than the "
                     "%d tensors of the program's table",
                     (int)n_found, (int)s->desc->n_tensors);
  return session_load("dlc_session_load_partial", s, path, 1, found);
}

dlc_status dlc_tensors_load(const dlc_program_desc *desc, void *const *tensors,
                            const char *path) {
  dlc_status st = dlc__check_table("dlc_tensors_load", desc, tensors, DLC_ROLE_PARAM);
  if (st == DLC_OK && path == NULL)
    st = dlc__fail(DLC_ERR_INVALID_ARGUMENT, "dlc_tensors_load: path must not be NULL");
  return st == DLC_OK ? open_and_load(desc, tensors, path, 0, 0, NULL) : st;
}

dlc_status dlc_tensors_load_memory(const dlc_program_desc *desc, void *const *tensors,
                                   const void *bytes, size_t size) {
  dlc_status st =
      dlc__check_table("dlc_tensors_load_memory", desc, tensors, DLC_ROLE_PARAM);
  if (st != DLC_OK)
    return st;
  if (bytes == NULL && size > 0)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_tensors_load_memory: bytes must not be NULL");
  if (size == 0) /* fmemopen refuses empty buffers */
    return dlc__fail(DLC_ERR_FORMAT,
                     "weights file '(memory)' is truncated: it has 0 bytes, fewer "
                     "than the 8 of a safetensors header length");
  /* Read-only: fmemopen's "rb" never writes to the buffer. */
  FILE *f = fmemopen((void *)(uintptr_t)bytes, size, "rb");
  if (f == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "cannot open a buffer of %llu bytes: %s",
                     (unsigned long long)size, strerror(errno));
  return load_file(desc, tensors, f, "(memory)", 0, 0, NULL);
}
