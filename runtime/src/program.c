/* program.c — loading a compiled program library and validating its
 * descriptor, so that the rest of the runtime can trust it. */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

static int valid_name(const char *s) { return s != NULL && s[0] != '\0'; }

static dlc_status check_tensor(const char *path, const dlc_program_desc *d,
                               int32_t i) {
  const dlc_tensor_desc *t = &d->tensors[i];
  if (!valid_name(t->name))
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': tensor %d has no name",
                     path, (int)i);
  if (t->role < DLC_ROLE_PARAM || t->role > DLC_ROLE_OUTPUT)
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': tensor '%s' has unknown role %d",
                     path, t->name, (int)t->role);
  if (dlc__dtype_size(t->dtype) == 0)
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': tensor '%s' has unknown dtype %d",
                     path, t->name, (int)t->dtype);
  if (t->rank < 0 || t->rank > DLC_MAX_RANK)
    return dlc__fail(DLC_ERR_FORMAT,
                     "program '%s': tensor '%s' has rank %d; ranks go from 0 to %d",
                     path, t->name, (int)t->rank, DLC_MAX_RANK);
  if (t->rank > 0 && t->dims == NULL)
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': tensor '%s' has no dims",
                     path, t->name);
  int owned = t->role == DLC_ROLE_PARAM || t->role == DLC_ROLE_STATE;
  int64_t bytes = (int64_t)dlc__dtype_size(t->dtype);
  for (int32_t k = 0; k < t->rank; k++) {
    int64_t dim = t->dims[k];
    if (dim < 0 && -(dim + 1) >= d->n_syms)
      return dlc__fail(DLC_ERR_FORMAT,
                       "program '%s': tensor '%s' dim %d names symbol %lld, but "
                       "the program has %d symbols",
                       path, t->name, (int)k, (long long)-(dim + 1), (int)d->n_syms);
    if (dim < 0 && owned)
      return dlc__fail(DLC_ERR_FORMAT,
                       "program '%s': %s '%s' has symbolic dim %d (%s); params "
                       "and optimizer state must have fixed shapes",
                       path, t->role == DLC_ROLE_PARAM ? "param" : "state",
                       t->name, (int)k, d->sym_names[-(dim + 1)]);
    if (dim >= 0 && !dlc__mul_ok(bytes, dim, &bytes))
      return dlc__fail(DLC_ERR_FORMAT, "program '%s': tensor '%s' is too large",
                       path, t->name);
  }
  if (owned && (t->init < DLC_INIT_ZEROS || t->init > DLC_INIT_CONSTANT))
    return dlc__fail(DLC_ERR_FORMAT,
                     "program '%s': tensor '%s' has unknown init rule %d", path,
                     t->name, (int)t->init);
  if (owned && (uint64_t)bytes > (uint64_t)SIZE_MAX)
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': tensor '%s' is too large",
                     path, t->name);
  if (t->bounded && (t->role != DLC_ROLE_INPUT || t->dtype != DLC_I32 ||
                     t->hi_sym < -1 || t->hi_sym >= d->n_syms))
    return dlc__fail(DLC_ERR_FORMAT,
                     "program '%s': tensor '%s' has a range of valid values, but "
                     "ranges are for i32 inputs with a known symbol (hi_sym %d)",
                     path, t->name, (int)t->hi_sym);
  return DLC_OK;
}

/* Checks one list of an entry (its inputs or its outputs). */
static dlc_status check_entry_list(const char *path, const dlc_program_desc *d,
                                   const dlc_entry_desc *e, const char *what,
                                   int32_t n, const int32_t *idx, int32_t role) {
  if (n < 0 || (n > 0 && idx == NULL))
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': entry '%s' has a bad %s list",
                     path, e->name, what);
  for (int32_t k = 0; k < n; k++) {
    if (idx[k] < 0 || idx[k] >= d->n_tensors)
      return dlc__fail(DLC_ERR_FORMAT,
                       "program '%s': entry '%s' %s %d is tensor %d, out of range",
                       path, e->name, what, (int)k, (int)idx[k]);
    const dlc_tensor_desc *t = &d->tensors[idx[k]];
    if (t->role != role)
      return dlc__fail(DLC_ERR_FORMAT,
                       "program '%s': entry '%s' lists tensor '%s' among its %ss, "
                       "but its role is %d",
                       path, e->name, t->name, what, (int)t->role);
    for (int32_t j = 0; j < k; j++)
      if (strcmp(d->tensors[idx[j]].name, t->name) == 0)
        return dlc__fail(DLC_ERR_FORMAT,
                         "program '%s': entry '%s' has two %ss named '%s'", path,
                         e->name, what, t->name);
  }
  return DLC_OK;
}

static int entry_input_has_sym(const dlc_program_desc *d, const dlc_entry_desc *e,
                               int64_t dim) {
  for (int32_t k = 0; k < e->n_inputs; k++) {
    const dlc_tensor_desc *t = &d->tensors[e->inputs[k]];
    for (int32_t j = 0; j < t->rank; j++)
      if (t->dims[j] == dim)
        return 1;
  }
  return 0;
}

static dlc_status check_entry(const char *path, const dlc_program_desc *d,
                              int32_t i) {
  const dlc_entry_desc *e = &d->entries[i];
  if (!valid_name(e->name))
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': entry %d has no name", path,
                     (int)i);
  for (int32_t j = 0; j < i; j++)
    if (strcmp(d->entries[j].name, e->name) == 0)
      return dlc__fail(DLC_ERR_FORMAT, "program '%s': two entries are named '%s'",
                       path, e->name);
  if (e->kind < DLC_ENTRY_INFER || e->kind > DLC_ENTRY_GRADS)
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': entry '%s' has unknown kind %d",
                     path, e->name, (int)e->kind);
  if (e->run == NULL || e->workspace_bytes == NULL)
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': entry '%s' has no code", path,
                     e->name);
  dlc_status st = check_entry_list(path, d, e, "input", e->n_inputs, e->inputs,
                                   DLC_ROLE_INPUT);
  if (st == DLC_OK)
    st = check_entry_list(path, d, e, "output", e->n_outputs, e->outputs,
                          DLC_ROLE_OUTPUT);
  if (st != DLC_OK)
    return st;
  /* The runtime checks an input's range with the symbols the inputs bind. */
  for (int32_t k = 0; k < e->n_inputs; k++) {
    const dlc_tensor_desc *t = &d->tensors[e->inputs[k]];
    if (t->bounded && t->hi_sym >= 0 && !entry_input_has_sym(d, e, -(int64_t)t->hi_sym - 1))
      return dlc__fail(DLC_ERR_FORMAT,
                       "program '%s': the range of input '%s' of entry '%s' uses "
                       "symbol '%s', which none of its inputs binds",
                       path, t->name, e->name, d->sym_names[t->hi_sym]);
  }
  /* Output shapes are computed from symbols, so the inputs must bind them. */
  for (int32_t k = 0; k < e->n_outputs; k++) {
    const dlc_tensor_desc *t = &d->tensors[e->outputs[k]];
    for (int32_t j = 0; j < t->rank; j++)
      if (t->dims[j] < 0 && !entry_input_has_sym(d, e, t->dims[j]))
        return dlc__fail(DLC_ERR_FORMAT,
                         "program '%s': output '%s' of entry '%s' uses symbol "
                         "'%s', which none of its inputs binds",
                         path, t->name, e->name, d->sym_names[-t->dims[j] - 1]);
  }
  return DLC_OK;
}

dlc_status dlc__check_desc(const char *path, const dlc_program_desc *d) {
  if (d == NULL)
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': dlc_program() returned NULL",
                     path);
  if (d->abi_version != DLC_ABI_VERSION)
    return dlc__fail(DLC_ERR_ABI,
                     "program '%s' was compiled for runtime ABI version %d, but "
                     "this runtime implements version %d; recompile it with a "
                     "matching dlc",
                     path, (int)d->abi_version, DLC_ABI_VERSION);
  if (d->n_syms < 0 || d->n_tensors < 0 || d->n_entries < 0 ||
      (d->n_syms > 0 && d->sym_names == NULL) ||
      (d->n_tensors > 0 && d->tensors == NULL) ||
      (d->n_entries > 0 && d->entries == NULL))
    return dlc__fail(DLC_ERR_FORMAT, "program '%s': malformed descriptor", path);
  for (int32_t i = 0; i < d->n_syms; i++) {
    if (!valid_name(d->sym_names[i]))
      return dlc__fail(DLC_ERR_FORMAT, "program '%s': symbol %d has no name",
                       path, (int)i);
    for (int32_t j = 0; j < i; j++)
      if (strcmp(d->sym_names[i], d->sym_names[j]) == 0)
        return dlc__fail(DLC_ERR_FORMAT, "program '%s': two symbols are named '%s'",
                         path, d->sym_names[i]);
  }
  for (int32_t i = 0; i < d->n_tensors; i++) {
    dlc_status st = check_tensor(path, d, i);
    if (st != DLC_OK)
      return st;
    /* Params are saved and looked up by name, so their names are unique. */
    if (d->tensors[i].role == DLC_ROLE_PARAM &&
        dlc__find_param(d, d->tensors[i].name) != i)
      return dlc__fail(DLC_ERR_FORMAT, "program '%s': two params are named '%s'",
                       path, d->tensors[i].name);
  }
  for (int32_t i = 0; i < d->n_entries; i++) {
    dlc_status st = check_entry(path, d, i);
    if (st != DLC_OK)
      return st;
  }
  return DLC_OK;
}

dlc_status dlc_program_load(const char *path, dlc_program **out_program) {
  if (path == NULL || out_program == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_program_load: path and out_program must not be NULL");
  struct stat sb;
  if (stat(path, &sb) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return dlc__fail(DLC_ERR_NOT_FOUND, "program library '%s' not found", path);
    return dlc__fail(DLC_ERR_IO, "program library '%s': %s", path, strerror(errno));
  }
  void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    const char *why = dlerror();
    return dlc__fail(DLC_ERR_FORMAT, "cannot load program library '%s': %s", path,
                     why ? why : "unknown error");
  }
  /* POSIX leaves object-to-function pointer casts to dlsym's contract. */
  dlc_program_fn fn;
  void *sym = dlsym(handle, DLC_PROGRAM_SYMBOL);
  memcpy(&fn, &sym, sizeof fn);
  if (sym == NULL) {
    dlclose(handle);
    return dlc__fail(DLC_ERR_FORMAT,
                     "'%s' is not a dlc program: it exports no '%s' symbol", path,
                     DLC_PROGRAM_SYMBOL);
  }
  const dlc_program_desc *desc = fn();
  dlc_status st = dlc__check_desc(path, desc);
  if (st != DLC_OK) {
    dlclose(handle);
    return st;
  }
  dlc_program *p = (dlc_program *)malloc(sizeof *p);
  if (p == NULL) {
    dlclose(handle);
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory loading '%s'", path);
  }
  p->handle = handle;
  p->desc = desc;
  p->refs = 1;
  /* A CUDA program also describes its kernels (checked by cuda.c). */
  dlc_cuda_program_fn cuda_fn;
  void *cuda_sym = dlsym(handle, DLC_CUDA_SYMBOL);
  memcpy(&cuda_fn, &cuda_sym, sizeof cuda_fn);
  p->cuda = cuda_sym != NULL ? cuda_fn() : NULL;
  *out_program = p;
  return DLC_OK;
}

dlc_status dlc_program_from_descriptor(const dlc_program_desc *desc,
                                       const char *name,
                                       dlc_program **out_program) {
  if (desc == NULL || name == NULL || out_program == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_program_from_descriptor: desc, name and out_program "
                     "must not be NULL");
  dlc_status st = dlc__check_desc(name, desc);
  if (st != DLC_OK)
    return st;
  dlc_program *p = (dlc_program *)malloc(sizeof *p);
  if (p == NULL)
    return dlc__fail(DLC_ERR_OUT_OF_MEMORY, "out of memory wrapping program '%s'",
                     name);
  p->handle = NULL;
  p->desc = desc;
  p->cuda = NULL; /* linked programs are CPU programs (dlc compile --emit lib) */
  p->refs = 1;
  *out_program = p;
  return DLC_OK;
}

dlc_status dlc__check_table(const char *fn, const dlc_program_desc *desc,
                            void *const *tensors, int32_t max_role) {
  if (desc == NULL || tensors == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT, "%s: desc and tensors must not be NULL",
                     fn);
  dlc_status st = dlc__check_desc("(caller's descriptor)", desc);
  if (st != DLC_OK)
    return st;
  for (int32_t i = 0; i < desc->n_tensors; i++) {
    const dlc_tensor_desc *t = &desc->tensors[i];
    if (t->role > max_role)
      continue;
    if (tensors[i] == NULL && dlc__fixed_numel(t) > 0)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT, "%s: tensor %d ('%s') is NULL", fn,
                       (int)i, t->name);
    if (((uintptr_t)tensors[i] & (DLC_ALIGNMENT - 1)) != 0)
      return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                       "%s: tensor %d ('%s') is not %d-byte aligned", fn, (int)i,
                       t->name, DLC_ALIGNMENT);
  }
  return DLC_OK;
}

void dlc__program_retain(dlc_program *p) {
  __atomic_fetch_add(&p->refs, 1, __ATOMIC_RELAXED);
}

void dlc_program_release(dlc_program *p) {
  if (p == NULL)
    return;
  if (__atomic_fetch_sub(&p->refs, 1, __ATOMIC_ACQ_REL) == 1) {
    if (p->handle != NULL)
      dlclose(p->handle);
    free(p);
  }
}

dlc_status dlc_program_descriptor(const dlc_program *program,
                                  const dlc_program_desc **out_desc) {
  if (program == NULL || out_desc == NULL)
    return dlc__fail(DLC_ERR_INVALID_ARGUMENT,
                     "dlc_program_descriptor: program and out_desc must not be NULL");
  *out_desc = program->desc;
  return DLC_OK;
}
