/* session.c — sessions: the memory a program runs in (params, optimizer
 * state, workspace, outputs), parameter access, and running entries with
 * every input checked before anything is written. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int is_owned(const dlc_tensor_desc *t) {
  return t->role == DLC_ROLE_PARAM || t->role == DLC_ROLE_STATE;
}

dlc_status dlc_session_options_initialize(dlc_session_options *options) {
  if (options == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_options_initialize: options must not be NULL");
  options->seed = 0;
  options->num_threads = 0;
  return DLC_OK;
}

void dlc__session_lock(const dlc_session *s) {
  pthread_mutex_lock((pthread_mutex_t *)&s->lock);
}

void dlc__session_unlock(const dlc_session *s) {
  pthread_mutex_unlock((pthread_mutex_t *)&s->lock);
}

void dlc_session_release(dlc_session *s) {
  if (s == NULL)
    return;
  dlc__cuda_session_release(s);
  const dlc_program_desc *d = s->desc;
  if (s->data != NULL)
    for (int32_t i = 0; i < d->n_tensors; i++)
      dlc__aligned_free(s->data[i]);
  if (s->entries != NULL)
    for (int32_t e = 0; e < d->n_entries; e++) {
      if (s->entries[e].out_data != NULL)
        for (int32_t k = 0; k < d->entries[e].n_outputs; k++)
          dlc__aligned_free(s->entries[e].out_data[k]);
      free(s->entries[e].out_data);
      free(s->entries[e].out_cap);
      free(s->entries[e].pending);
      free(s->entries[e].pending_cap);
    }
  free(s->entries);
  free(s->data);
  free(s->bytes);
  dlc__aligned_free(s->workspace);
  free(s->table);
  free(s->syms);
  free(s->sym_input);
  free(s->sym_dim);
  free(s->given);
  free(s->out_dims);
  dlc__pool_release(s->pool);
  dlc_program_release(s->program);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

/* calloc that never returns NULL for a zero count, so NULL means failure. */
static void *zalloc(size_t n, size_t size) { return calloc(n ? n : 1, size); }

dlc_status dlc_session_create(dlc_program *program,
                              const dlc_session_options *options,
                              dlc_session **out_session) {
  if (program == NULL || out_session == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_create: program and out_session must not be NULL");
  dlc_session_options defaults;
  dlc_session_options_initialize(&defaults);
  if (options == NULL)
    options = &defaults;
  if (options->num_threads < 0 || options->num_threads > DLC_MAX_THREADS)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "num_threads is %d; use 0 for one per core, or a count from "
                     "1 to %d",
                     (int)options->num_threads, DLC_MAX_THREADS);
  int32_t num_threads;
  dlc_status threads = dlc__pool_threads(options->num_threads, &num_threads);
  if (threads != DLC_OK)
    return threads;
  const dlc_program_desc *d = program->desc;
  dlc_session *s = (dlc_session *)zalloc(1, sizeof *s);
  if (s == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory creating a session");
  if (pthread_mutex_init(&s->lock, NULL) != 0) {
    free(s);
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "cannot create the lock of a session");
  }
  dlc__program_retain(program);
  s->program = program;
  s->desc = d;
  s->num_threads = num_threads;
  s->pool = dlc__pool_create(s->num_threads);
  s->host.pool = s->pool;
  s->host.parallel_for = dlc__pool_parallel_for;
  size_t nt = (size_t)d->n_tensors, ns = (size_t)d->n_syms;
  int32_t max_inputs = 0, max_outputs = 0;
  for (int32_t e = 0; e < d->n_entries; e++) {
    if (d->entries[e].n_inputs > max_inputs)
      max_inputs = d->entries[e].n_inputs;
    if (d->entries[e].n_outputs > max_outputs)
      max_outputs = d->entries[e].n_outputs;
  }
  s->data = (void **)zalloc(nt, sizeof(void *));
  s->bytes = (size_t *)zalloc(nt, sizeof(size_t));
  s->table = (void **)zalloc(nt, sizeof(void *));
  s->syms = (int64_t *)zalloc(ns, sizeof(int64_t));
  s->sym_input = (int32_t *)zalloc(ns, sizeof(int32_t));
  s->sym_dim = (int32_t *)zalloc(ns, sizeof(int32_t));
  s->given = (int32_t *)zalloc((size_t)max_inputs, sizeof(int32_t));
  s->out_dims = (int64_t(*)[DLC_MAX_RANK])zalloc((size_t)max_outputs,
                                                 sizeof(int64_t[DLC_MAX_RANK]));
  s->entries = (dlc_entry_state *)zalloc((size_t)d->n_entries, sizeof(dlc_entry_state));
  int ok = s->pool && s->data && s->bytes && s->table && s->syms && s->sym_input &&
           s->sym_dim && s->given && s->out_dims && s->entries;
  for (int32_t e = 0; ok && e < d->n_entries; e++) {
    size_t no = (size_t)d->entries[e].n_outputs;
    s->entries[e].out_data = (void **)zalloc(no, sizeof(void *));
    s->entries[e].out_cap = (size_t *)zalloc(no, sizeof(size_t));
    s->entries[e].pending = (void **)zalloc(no, sizeof(void *));
    s->entries[e].pending_cap = (size_t *)zalloc(no, sizeof(size_t));
    ok = s->entries[e].out_data && s->entries[e].out_cap && s->entries[e].pending &&
         s->entries[e].pending_cap;
  }
  for (int32_t i = 0; ok && i < d->n_tensors; i++) {
    const dlc_tensor_desc *t = &d->tensors[i];
    if (!is_owned(t))
      continue;
    s->bytes[i] = (size_t)dlc__fixed_numel(t) * dlc__dtype_size(t->dtype);
    s->data[i] = dlc__aligned_alloc(s->bytes[i]);
    ok = s->data[i] != NULL;
  }
  if (!ok) {
    dlc_session_release(s);
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY,
                     "out of memory allocating the params and state of a session");
  }
  for (int32_t i = 0; i < d->n_tensors; i++)
    s->table[i] = s->data[i];
  dlc_session_init_params(s, options->seed);
  if (program->cuda != NULL) {
    dlc_status st = dlc__cuda_session_create(s);
    if (st != DLC_OK) {
      dlc_session_release(s);
      return st;
    }
  }
  *out_session = s;
  return DLC_OK;
}

dlc_status dlc_session_init_params(dlc_session *s, uint64_t seed) {
  if (s == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_init_params: session must not be NULL");
  dlc__session_lock(s);
  dlc_status st = dlc__cuda_host_access(s);
  if (st == DLC_OK)
    dlc__init_tensors(s->desc, s->data, seed);
  dlc__session_unlock(s);
  return st;
}

/* dlc__cuda_host_access under the session's lock: after it, views show the
 * params (the caller's reads and writes through them are the caller's to
 * order with runs on other threads). */
static dlc_status host_access(dlc_session *s) {
  dlc__session_lock(s);
  dlc_status st = dlc__cuda_host_access(s);
  dlc__session_unlock(s);
  return st;
}

static void view_of(const dlc_session *s, int32_t i, dlc_tensor *out) {
  const dlc_tensor_desc *t = &s->desc->tensors[i];
  memset(out, 0, sizeof *out);
  out->data = s->data[i];
  out->dtype = t->dtype;
  out->rank = t->rank;
  for (int32_t k = 0; k < t->rank; k++)
    out->dims[k] = t->dims[k];
}

static int32_t count_role(const dlc_session *s, int32_t role) {
  int32_t n = 0;
  for (int32_t i = 0; i < s->desc->n_tensors; i++)
    n += s->desc->tensors[i].role == role;
  return n;
}

/* The i-th tensor of `role`, for dlc_session_param_at and _state_at. */
static dlc_status tensor_at(const char *fn, dlc_session *s, int32_t role, int32_t i,
                            const char **out_name, dlc_tensor *out_view) {
  if (s == NULL || out_name == NULL || out_view == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "%s: session, out_name and out_view must not be NULL", fn);
  dlc_status access = host_access(s);
  if (access != DLC_OK)
    return access;
  int32_t n = 0;
  for (int32_t t = 0; t < s->desc->n_tensors; t++) {
    if (s->desc->tensors[t].role != role)
      continue;
    if (n++ == i) {
      *out_name = s->desc->tensors[t].name;
      view_of(s, t, out_view);
      return DLC_OK;
    }
  }
  const char *what = role == DLC_ROLE_PARAM ? "param" : "state";
  return dlc__fail(DLC_ERR_INVALID_ARGUMENT, "%s index %d is out of range; the program has %d %ss",
                   what, (int)i, (int)n, what);
}

dlc_status dlc_session_param_count(const dlc_session *s, int32_t *out_count) {
  if (s == NULL || out_count == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_param_count: session and out_count must not be NULL");
  *out_count = count_role(s, DLC_ROLE_PARAM);
  return DLC_OK;
}

dlc_status dlc_session_state_count(const dlc_session *s, int32_t *out_count) {
  if (s == NULL || out_count == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_state_count: session and out_count must not be NULL");
  *out_count = count_role(s, DLC_ROLE_STATE);
  return DLC_OK;
}

dlc_status dlc_session_param_at(dlc_session *s, int32_t i, const char **out_name,
                                dlc_tensor *out_view) {
  return tensor_at("dlc_session_param_at", s, DLC_ROLE_PARAM, i, out_name, out_view);
}

dlc_status dlc_session_state_at(dlc_session *s, int32_t i, const char **out_name,
                                dlc_tensor *out_view) {
  return tensor_at("dlc_session_state_at", s, DLC_ROLE_STATE, i, out_name, out_view);
}

static dlc_status param_not_found(const dlc_program_desc *d, const char *name) {
  dlc_sb sb;
  dlc__sb_init(&sb);
  int n = 0;
  for (int32_t i = 0; i < d->n_tensors; i++)
    if (d->tensors[i].role == DLC_ROLE_PARAM)
      dlc__sb_printf(&sb, "%s%s", n++ ? ", " : "", d->tensors[i].name);
  if (n == 0)
    return dlc__fail(DLC_ERR_NOT_FOUND,
                     "param '%s' not found; the program has no params", name);
  return dlc__fail(DLC_ERR_NOT_FOUND, "param '%s' not found; params are: %s", name,
                   sb.buf);
}

dlc_status dlc_session_param(dlc_session *s, const char *name, dlc_tensor *out_view) {
  if (s == NULL || name == NULL || out_view == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_param: session, name and out_view must not be NULL");
  dlc_status access = host_access(s);
  if (access != DLC_OK)
    return access;
  int32_t i = dlc__find_param(s->desc, name);
  if (i < 0)
    return param_not_found(s->desc, name);
  view_of(s, i, out_view);
  return DLC_OK;
}

dlc_status dlc_session_set_param(dlc_session *s, const char *name,
                                 const dlc_tensor *value) {
  if (s == NULL || name == NULL || value == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_session_set_param: session, name and value must not be NULL");
  const dlc_program_desc *d = s->desc;
  int32_t i = dlc__find_param(d, name);
  if (i < 0)
    return param_not_found(d, name);
  const dlc_tensor_desc *t = &d->tensors[i];
  if (value->dtype != t->dtype)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "param '%s' has dtype %s; the value has dtype %s", name,
                     dlc__dtype_name(t->dtype), dlc__dtype_name(value->dtype));
  int same = value->rank == t->rank;
  for (int32_t k = 0; same && k < t->rank; k++)
    same = value->dims[k] == t->dims[k];
  if (!same) {
    dlc_sb want, got;
    dlc__sb_init(&want);
    dlc__sb_init(&got);
    dlc__sb_decl_shape(&want, d, t);
    if (value->rank >= 0 && value->rank <= DLC_MAX_RANK)
      dlc__sb_shape(&got, value->rank, value->dims);
    else
      dlc__sb_printf(&got, "of rank %d", (int)value->rank);
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "param '%s' has shape %s; the value has shape %s", name,
                     want.buf, got.buf);
  }
  if (value->data == NULL && s->bytes[i] > 0)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT, "the value for param '%s' has no data",
                     name);
  dlc__session_lock(s);
  dlc_status st = dlc__cuda_host_access(s);
  if (st == DLC_OK && s->bytes[i] > 0)
    memmove(s->data[i], value->data, s->bytes[i]);
  dlc__session_unlock(s);
  return st;
}

/* ---- run ----------------------------------------------------------------- */

static dlc_status entry_not_found(const dlc_program_desc *d, const char *name) {
  dlc_sb sb;
  dlc__sb_init(&sb);
  for (int32_t e = 0; e < d->n_entries; e++)
    dlc__sb_printf(&sb, "%s%s", e ? ", " : "", d->entries[e].name);
  if (d->n_entries == 0)
    return dlc__fail(DLC_ERR_NOT_FOUND,
                     "entry '%s' not found; the program has no entries", name);
  return dlc__fail(DLC_ERR_NOT_FOUND, "entry '%s' not found; entries are: %s", name,
                   sb.buf);
}

static void list_inputs(dlc_sb *sb, const dlc_program_desc *d,
                        const dlc_entry_desc *e) {
  dlc__sb_init(sb);
  for (int32_t k = 0; k < e->n_inputs; k++)
    dlc__sb_printf(sb, "%s%s", k ? ", " : "", d->tensors[e->inputs[k]].name);
  if (e->n_inputs == 0)
    dlc__sb_printf(sb, "(none)");
}

/* Maps each of the entry's inputs to its position in the call. */
static dlc_status match_inputs(dlc_session *s, const dlc_entry_desc *e,
                               int32_t n_inputs, const char *const *names) {
  const dlc_program_desc *d = s->desc;
  dlc_sb sb;
  for (int32_t k = 0; k < e->n_inputs; k++)
    s->given[k] = -1;
  for (int32_t i = 0; i < n_inputs; i++) {
    if (names[i] == NULL)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "input %d of the call to entry '%s' has a NULL name", (int)i,
                       e->name);
    int32_t k = 0;
    while (k < e->n_inputs && strcmp(d->tensors[e->inputs[k]].name, names[i]) != 0)
      k++;
    if (k == e->n_inputs) {
      list_inputs(&sb, d, e);
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "entry '%s' has no input '%s'; its inputs are: %s", e->name,
                       names[i], sb.buf);
    }
    if (s->given[k] >= 0)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "input '%s' of entry '%s' is given twice", names[i], e->name);
    s->given[k] = i;
  }
  for (int32_t k = 0; k < e->n_inputs; k++)
    if (s->given[k] < 0) {
      list_inputs(&sb, d, e);
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "entry '%s' needs input '%s', which is missing; its inputs "
                       "are: %s",
                       e->name, d->tensors[e->inputs[k]].name, sb.buf);
    }
  return DLC_OK;
}

static dlc_status input_error(const dlc_program_desc *d, const dlc_entry_desc *e,
                              const dlc_tensor_desc *t, const char *what) {
  dlc_sb sb;
  dlc__sb_init(&sb);
  dlc__sb_decl_shape(&sb, d, t);
  return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                   "input '%s' of entry '%s': %s but the program declares %s",
                   t->name, e->name, what, sb.buf);
}

static int overlaps(const void *a, size_t na, const void *b, size_t nb) {
  uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
  return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

/* Checks every input and binds the symbols from their dims. */
static dlc_status check_inputs(dlc_session *s, int32_t ei, const dlc_tensor *inputs) {
  const dlc_program_desc *d = s->desc;
  const dlc_entry_desc *e = &d->entries[ei];
  const dlc_entry_state *es = &s->entries[ei];
  char what[160];
  for (int32_t j = 0; j < d->n_syms; j++) {
    s->syms[j] = 0;
    s->sym_input[j] = -1;
  }
  for (int32_t k = 0; k < e->n_inputs; k++) {
    const dlc_tensor_desc *t = &d->tensors[e->inputs[k]];
    const dlc_tensor *v = &inputs[s->given[k]];
    if (v->dtype != t->dtype)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "input '%s' of entry '%s': dtype is %s but the program "
                       "declares %s",
                       t->name, e->name, dlc__dtype_name(v->dtype),
                       dlc__dtype_name(t->dtype));
    if (v->rank != t->rank) {
      snprintf(what, sizeof what, "rank is %d", (int)v->rank);
      return input_error(d, e, t, what);
    }
    int64_t numel = 1;
    for (int32_t j = 0; j < t->rank; j++) {
      int64_t dim = v->dims[j], decl = t->dims[j];
      if (dim < 0) {
        snprintf(what, sizeof what, "dim %d is %lld", (int)j, (long long)dim);
        return input_error(d, e, t, what);
      }
      if (decl >= 0 && dim != decl) {
        snprintf(what, sizeof what, "dim %d is %lld", (int)j, (long long)dim);
        return input_error(d, e, t, what);
      }
      if (decl < 0) {
        int32_t sym = (int32_t)(-decl - 1);
        if (dim < 1)
          return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                           "input '%s' of entry '%s': dim %d is %lld, but it binds "
                           "symbol '%s', which must be >= 1",
                           t->name, e->name, (int)j, (long long)dim,
                           d->sym_names[sym]);
        if (s->sym_input[sym] < 0) {
          s->syms[sym] = dim;
          s->sym_input[sym] = k;
          s->sym_dim[sym] = j;
        } else if (s->syms[sym] != dim) {
          return dlc__fail(
              DLC_ERR_INVALID_ARGUMENT,
              "entry '%s': symbol '%s' is %lld from dim %d of input '%s', but "
              "%lld from dim %d of input '%s'",
              e->name, d->sym_names[sym], (long long)s->syms[sym],
              (int)s->sym_dim[sym], d->tensors[e->inputs[s->sym_input[sym]]].name,
              (long long)dim, (int)j, t->name);
        }
      }
      if (!dlc__mul_ok(numel, dim, &numel))
        return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                         "input '%s' of entry '%s' is too large", t->name, e->name);
    }
    int64_t bytes;
    if (!dlc__mul_ok(numel, (int64_t)dlc__dtype_size(t->dtype), &bytes) ||
        (uint64_t)bytes > (uint64_t)SIZE_MAX)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "input '%s' of entry '%s' is too large", t->name, e->name);
    if (v->data == NULL && bytes > 0)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "input '%s' of entry '%s' has no data", t->name, e->name);
    for (int32_t o = 0; o < e->n_outputs; o++)
      if (overlaps(v->data, (size_t)bytes, es->out_data[o], es->out_cap[o]))
        return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                         "input '%s' of entry '%s' overlaps output '%s' of an "
                         "earlier run of the same entry; pass a copy",
                         t->name, e->name, d->tensors[e->outputs[o]].name);
  }
  return DLC_OK;
}

/* "[1, time] = [1, 7]", "[0, classes - 1] = [0, 9]" or "[0, 99]": a bounded
 * input's valid values with the symbols bound; *hi gets the upper bound. */
static void describe_range(dlc_sb *sb, const dlc_session *s, const dlc_tensor_desc *t,
                           int64_t *hi) {
  *hi = t->hi;
  if (t->hi_sym < 0) {
    dlc__sb_printf(sb, "[%lld, %lld]", (long long)t->lo, (long long)t->hi);
    return;
  }
  int64_t sym = s->syms[t->hi_sym];
  /* Saturate: a symbol near INT64_MAX only comes with an empty input. */
  *hi = t->hi > 0 && sym > INT64_MAX - t->hi ? INT64_MAX : sym + t->hi;
  dlc__sb_printf(sb, "[%lld, %s", (long long)t->lo, s->desc->sym_names[t->hi_sym]);
  if (t->hi != 0)
    dlc__sb_printf(sb, " %c %llu", t->hi < 0 ? '-' : '+',
                   t->hi < 0 ? 0 - (unsigned long long)t->hi : (unsigned long long)t->hi);
  dlc__sb_printf(sb, "] = [%lld, %lld]", (long long)t->lo, (long long)*hi);
}

/* Checks the values of the entry's bounded inputs (tokens, labels, lengths:
 * see dlc_tensor_desc) against their ranges, after check_inputs bound the
 * symbols: an index out of range would give NaN or worse. */
static dlc_status check_ranges(const dlc_session *s, int32_t ei, const dlc_tensor *inputs) {
  const dlc_program_desc *d = s->desc;
  const dlc_entry_desc *e = &d->entries[ei];
  for (int32_t k = 0; k < e->n_inputs; k++) {
    const dlc_tensor_desc *t = &d->tensors[e->inputs[k]];
    if (!t->bounded)
      continue;
    const dlc_tensor *v = &inputs[s->given[k]];
    int64_t numel = 1, hi;
    for (int32_t j = 0; j < v->rank; j++)
      numel *= v->dims[j]; /* no overflow: check_inputs checked it */
    dlc_sb range;
    dlc__sb_init(&range);
    describe_range(&range, s, t, &hi);
    if (t->has_extra)
      dlc__sb_printf(&range, " or %lld", (long long)t->extra);
    const void *host;
    void *copy;
    dlc_status st = dlc__cuda_input_on_host(s, v->data, (size_t)numel * sizeof(int32_t),
                                            &host, &copy);
    if (st != DLC_OK)
      return st;
    const int32_t *x = (const int32_t *)host;
    int64_t i = 0;
    while (i < numel && ((x[i] >= t->lo && x[i] <= hi) || (t->has_extra && x[i] == t->extra)))
      i++;
    int32_t bad = i < numel ? x[i] : 0;
    free(copy);
    if (i == numel)
      continue;
    dlc_sb at; /* the element's index, row-major */
    dlc__sb_init(&at);
    int64_t idx[DLC_MAX_RANK], rest = i;
    for (int32_t j = v->rank - 1; j >= 0; j--) {
      idx[j] = rest % v->dims[j];
      rest /= v->dims[j];
    }
    for (int32_t j = 0; j < v->rank; j++)
      dlc__sb_printf(&at, "%s%lld", j ? ", " : "", (long long)idx[j]);
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "input '%s' of entry '%s': %s[%s] is %d, outside the valid "
                     "range %s",
                     t->name, e->name, t->name, at.buf, (int)bad, range.buf);
  }
  return DLC_OK;
}

/* Output shape from the bound symbols; returns its size in bytes or -1. */
static int64_t output_shape(const dlc_session *s, const dlc_tensor_desc *t,
                            int64_t *dims) {
  int64_t n = (int64_t)dlc__dtype_size(t->dtype);
  for (int32_t j = 0; j < t->rank; j++) {
    int64_t decl = t->dims[j];
    dims[j] = decl >= 0 ? decl : s->syms[-decl - 1];
    if (!dlc__mul_ok(n, dims[j], &n))
      return -1;
  }
  return n;
}

/* Bytes of tensor t with the bound symbols (checked sizes). */
static size_t bound_bytes(const dlc_session *s, const dlc_tensor_desc *t) {
  int64_t dims[DLC_MAX_RANK];
  return (size_t)output_shape(s, t, dims);
}

/* Checks the caller's output tensors of dlc_session_run_into against the
 * shapes in s->out_dims, and against the inputs and each other. */
static dlc_status check_outputs_into(const dlc_session *s, int32_t ei,
                                     const dlc_tensor *inputs,
                                     const dlc_tensor *outputs) {
  const dlc_program_desc *d = s->desc;
  const dlc_entry_desc *e = &d->entries[ei];
  for (int32_t k = 0; k < e->n_outputs; k++) {
    const dlc_tensor_desc *t = &d->tensors[e->outputs[k]];
    const dlc_tensor *o = &outputs[k];
    int same = o->dtype == t->dtype && o->rank == t->rank;
    for (int32_t j = 0; same && j < t->rank; j++)
      same = o->dims[j] == s->out_dims[k][j];
    if (!same)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "output '%s' of entry '%s': the tensor given has another "
                       "dtype, rank or shape than these inputs make",
                       t->name, e->name);
    size_t bytes = bound_bytes(s, t);
    if (bytes > 0 && (o->data == NULL || ((uintptr_t)o->data & (DLC_ALIGNMENT - 1)) != 0))
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "output '%s' of entry '%s' has no data, or data not "
                       "aligned to %d bytes",
                       t->name, e->name, DLC_ALIGNMENT);
    for (int32_t i = 0; i < e->n_inputs; i++) {
      const dlc_tensor_desc *ti = &d->tensors[e->inputs[i]];
      if (overlaps(o->data, bytes, inputs[s->given[i]].data, bound_bytes(s, ti)))
        return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                         "output '%s' of entry '%s' overlaps input '%s'", t->name,
                         e->name, ti->name);
    }
    for (int32_t j = 0; j < k; j++) {
      const dlc_tensor_desc *tj = &d->tensors[e->outputs[j]];
      if (overlaps(o->data, bytes, outputs[j].data, bound_bytes(s, tj)))
        return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                         "outputs '%s' and '%s' of entry '%s' overlap", tj->name,
                         t->name, e->name);
    }
  }
  return DLC_OK;
}

/* dlc_session_run, and with `into` dlc_session_run_into; the session is
 * locked. */
static dlc_status run_entry(dlc_session *s, const char *entry, int32_t n_inputs,
                            const char *const *input_names, const dlc_tensor *inputs,
                            int32_t n_outputs, dlc_tensor *outputs, int into) {
  if (into && s->cuda != NULL)
    return dlc__fail(DLC_ERR_UNAVAILABLE,
                     "dlc_session_run_into is for sessions of CPU programs; use "
                     "dlc_session_run");
  const dlc_program_desc *d = s->desc;
  int32_t ei = 0;
  while (ei < d->n_entries && strcmp(d->entries[ei].name, entry) != 0)
    ei++;
  if (ei == d->n_entries)
    return entry_not_found(d, entry);
  const dlc_entry_desc *e = &d->entries[ei];
  dlc_entry_state *es = &s->entries[ei];
  if (n_inputs < 0 || (n_inputs > 0 && (input_names == NULL || inputs == NULL)))
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "entry '%s': %d inputs given, but the names or tensors are NULL",
                     entry, (int)n_inputs);
  if (n_outputs < e->n_outputs || (e->n_outputs > 0 && outputs == NULL))
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "entry '%s' has %d outputs, but room for %d was given", entry,
                     (int)e->n_outputs, outputs == NULL ? 0 : (int)n_outputs);
  dlc_status st = match_inputs(s, e, n_inputs, input_names);
  if (st == DLC_OK)
    st = check_inputs(s, ei, inputs);
  if (st == DLC_OK)
    st = check_ranges(s, ei, inputs);
  if (st != DLC_OK)
    return st;

  /* Size the outputs and the workspace; allocate what must grow, and only
   * once every allocation succeeded replace the old buffers. */
  /* A CUDA session's workspace is on the device (cuda.c). */
  int64_t ws = s->cuda != NULL ? 0 : e->workspace_bytes(s->syms);
  if (ws < 0)
    return dlc__fail(DLC_ERR_INTERNAL,
                     "entry '%s' asked for a workspace of %lld bytes; this is a "
                     "bug in dlc",
                     entry, (long long)ws);
  if ((uint64_t)ws > (uint64_t)SIZE_MAX)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY,
                     "entry '%s' needs a workspace of %lld bytes", entry, (long long)ws);
  int oom = 0;
  void *new_ws = NULL;
  if ((size_t)ws > s->workspace_cap || s->workspace == NULL) {
    new_ws = dlc__aligned_alloc((size_t)ws);
    oom = new_ws == NULL;
  }
  for (int32_t k = 0; k < e->n_outputs; k++) {
    int64_t bytes = output_shape(s, &d->tensors[e->outputs[k]], s->out_dims[k]);
    es->pending[k] = NULL;
    if (bytes < 0 || (uint64_t)bytes > (uint64_t)SIZE_MAX)
      oom = 1;
    else if (!oom && !into &&
             ((size_t)bytes > es->out_cap[k] || es->out_data[k] == NULL)) {
      es->pending[k] = dlc__aligned_alloc((size_t)bytes);
      es->pending_cap[k] = (size_t)bytes;
      oom = es->pending[k] == NULL;
    }
  }
  if (!oom && into) {
    st = check_outputs_into(s, ei, inputs, outputs);
    if (st != DLC_OK) {
      dlc__aligned_free(new_ws);
      return st;
    }
  }
  if (oom) {
    dlc__aligned_free(new_ws);
    for (int32_t k = 0; k < e->n_outputs; k++)
      dlc__aligned_free(es->pending[k]);
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY,
                     "out of memory allocating the outputs and workspace of entry "
                     "'%s'",
                     entry);
  }
  if (new_ws != NULL) {
    dlc__aligned_free(s->workspace);
    s->workspace = new_ws;
    s->workspace_cap = (size_t)ws;
  }
  for (int32_t k = 0; k < e->n_outputs; k++)
    if (es->pending[k] != NULL) {
      dlc__aligned_free(es->out_data[k]);
      es->out_data[k] = es->pending[k];
      es->out_cap[k] = es->pending_cap[k];
    }

  for (int32_t k = 0; k < e->n_inputs; k++)
    s->table[e->inputs[k]] = inputs[s->given[k]].data;
  for (int32_t k = 0; k < e->n_outputs; k++)
    s->table[e->outputs[k]] = into ? outputs[k].data : es->out_data[k];
  dlc_status cuda_st = DLC_OK;
  int32_t rc = 0;
  if (s->cuda != NULL)
    cuda_st = dlc__cuda_run(s, ei);
  else
    rc = e->run(s->table, s->syms, s->workspace, &s->host);
  /* Leave no caller pointers behind: other entries see NULL there. */
  for (int32_t k = 0; k < e->n_inputs; k++)
    s->table[e->inputs[k]] = NULL;
  for (int32_t k = 0; k < e->n_outputs; k++)
    s->table[e->outputs[k]] = NULL;
  if (cuda_st != DLC_OK)
    return cuda_st;
  if (rc != 0)
    return dlc__fail(DLC_ERR_INTERNAL,
                     "entry '%s' failed with code %d; this is a bug in dlc", entry,
                     (int)rc);
  if (into)
    return DLC_OK;
  for (int32_t k = 0; k < e->n_outputs; k++) {
    const dlc_tensor_desc *t = &d->tensors[e->outputs[k]];
    dlc_tensor *out = &outputs[k];
    out->data = es->out_data[k];
    out->dtype = t->dtype;
    out->rank = t->rank;
    memcpy(out->dims, s->out_dims[k], sizeof out->dims);
  }
  dlc__cuda_output_views(s, ei, outputs);
  return DLC_OK;
}

static dlc_status run_locked(dlc_session *s, const char *entry, int32_t n_inputs,
                             const char *const *input_names, const dlc_tensor *inputs,
                             int32_t n_outputs, dlc_tensor *outputs, int into) {
  if (s == NULL || entry == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "%s: session and entry must not be NULL",
                     into ? "dlc_session_run_into" : "dlc_session_run");
  dlc__session_lock(s);
  dlc_status st =
      run_entry(s, entry, n_inputs, input_names, inputs, n_outputs, outputs, into);
  dlc__session_unlock(s);
  return st;
}

dlc_status dlc_session_run(dlc_session *s, const char *entry, int32_t n_inputs,
                           const char *const *input_names, const dlc_tensor *inputs,
                           int32_t n_outputs, dlc_tensor *outputs) {
  return run_locked(s, entry, n_inputs, input_names, inputs, n_outputs, outputs, 0);
}

dlc_status dlc_session_run_into(dlc_session *s, const char *entry, int32_t n_inputs,
                                const char *const *input_names,
                                const dlc_tensor *inputs, int32_t n_outputs,
                                const dlc_tensor *outputs) {
  return run_locked(s, entry, n_inputs, input_names, inputs, n_outputs,
                    (dlc_tensor *)outputs, 1);
}
