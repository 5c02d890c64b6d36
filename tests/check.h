/* The C tests' checks: CHECK counts a passed or failed condition and prints
 * the runtime's last message on failure; CHECK_ERR expects a status and a
 * message containing `text`. Included by one test program each. */
#ifndef DLC_TESTS_CHECK_H
#define DLC_TESTS_CHECK_H

#include <stdio.h>
#include <string.h>

#include "dlc/runtime.h"

static int g_failed, g_passed;

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (cond) {                                                               \
      g_passed++;                                                             \
    } else {                                                                  \
      g_failed++;                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last message: %s\n",          \
              __FILE__, __LINE__, #cond, dlc_status_message());               \
    }                                                                         \
  } while (0)

#define CHECK_ERR(call, status, text)                                         \
  do {                                                                        \
    dlc_status st_ = (call);                                                  \
    CHECK(st_ == (status));                                                   \
    CHECK(strstr(dlc_status_message(), (text)) != NULL);                      \
  } while (0)

#endif /* DLC_TESTS_CHECK_H */
