/* status.c — status names, the thread-local error message, message building,
 * and the small helpers every other file uses. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#ifdef __cplusplus
#define DLC_THREAD_LOCAL thread_local
#else
#define DLC_THREAD_LOCAL _Thread_local
#endif

static DLC_THREAD_LOCAL char g_message[1024];

const char *dlc_status_message(void) { return g_message; }

const char *dlc_status_name(dlc_status status) {
  switch (status) {
  case DLC_OK: return "OK";
  case DLC_ERR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
  case DLC_ERR_NOT_FOUND: return "NOT_FOUND";
  case DLC_ERR_IO: return "IO";
  case DLC_ERR_FORMAT: return "FORMAT";
  case DLC_ERR_ABI: return "ABI";
  case DLC_ERR_OUT_OF_MEMORY: return "OUT_OF_MEMORY";
  case DLC_ERR_UNAVAILABLE: return "UNAVAILABLE";
  case DLC_ERR_INTERNAL: return "INTERNAL";
  }
  return "UNKNOWN";
}

dlc_status dlc__fail(dlc_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(g_message, sizeof g_message, fmt, ap);
  va_end(ap);
  if (n >= (int)sizeof g_message)
    memcpy(g_message + sizeof g_message - 4, "...", 4);
  return status;
}

void dlc__sb_init(dlc_sb *sb) {
  sb->buf[0] = '\0';
  sb->len = 0;
}

void dlc__sb_printf(dlc_sb *sb, const char *fmt, ...) {
  size_t room = sizeof sb->buf - sb->len;
  if (room <= 1)
    return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(sb->buf + sb->len, room, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n >= room) {
    sb->len = sizeof sb->buf - 1;
    memcpy(sb->buf + sizeof sb->buf - 4, "...", 4);
  } else {
    sb->len += (size_t)n;
  }
}

void dlc__sb_decl_shape(dlc_sb *sb, const dlc_program_desc *desc,
                        const dlc_tensor_desc *t) {
  dlc__sb_printf(sb, "[");
  for (int32_t i = 0; i < t->rank; i++) {
    int64_t d = t->dims[i];
    const char *sep = i ? ", " : "";
    if (d >= 0)
      dlc__sb_printf(sb, "%s%lld", sep, (long long)d);
    else
      dlc__sb_printf(sb, "%s%s", sep, desc->sym_names[-d - 1]);
  }
  dlc__sb_printf(sb, "]");
}

void dlc__sb_shape(dlc_sb *sb, int32_t rank, const int64_t *dims) {
  dlc__sb_printf(sb, "[");
  for (int32_t i = 0; i < rank; i++)
    dlc__sb_printf(sb, "%s%lld", i ? ", " : "", (long long)dims[i]);
  dlc__sb_printf(sb, "]");
}

size_t dlc__dtype_size(int32_t dtype) {
  switch (dtype) {
  case DLC_F32: return 4;
  case DLC_F64: return 8;
  case DLC_I32: return 4;
  default: return 0;
  }
}

const char *dlc__dtype_name(int32_t dtype) {
  switch (dtype) {
  case DLC_F32: return "f32";
  case DLC_F64: return "f64";
  case DLC_I32: return "i32";
  default: return "unknown";
  }
}

int64_t dlc__fixed_numel(const dlc_tensor_desc *t) {
  int64_t n = 1;
  for (int32_t k = 0; k < t->rank; k++)
    n *= t->dims[k];
  return n;
}

int dlc__mul_ok(int64_t a, int64_t b, int64_t *out) {
  if (a != 0 && b > INT64_MAX / a)
    return 0;
  *out = a * b;
  return 1;
}

void *dlc__aligned_alloc(size_t bytes) {
  void *p = NULL;
  if (bytes == 0)
    bytes = 1;
  if (posix_memalign(&p, DLC_ALIGN, bytes) != 0)
    return NULL;
  return p;
}

void dlc__aligned_free(void *p) { free(p); }

int32_t dlc__find_tensor(const dlc_program_desc *desc, int32_t role, const char *name) {
  for (int32_t i = 0; i < desc->n_tensors; i++)
    if (desc->tensors[i].role == role && strcmp(desc->tensors[i].name, name) == 0)
      return i;
  return -1;
}
