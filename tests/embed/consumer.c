/* An application built against the installed dlc package (test_embed.py):
 * prints the size of tiny's output for 4 points, and the output. */
#include <stdio.h>

#include "tiny.h"

int main(void) {
  dlc_program *program;
  dlc_session *session;
  float x[4 * 3] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, y[4 * 8];
  if (tiny_open(&program) != DLC_OK || dlc_session_create(program, NULL, &session) != DLC_OK ||
      tiny_tiny(session, 4, x, y) != DLC_OK) {
    fprintf(stderr, "consumer: %s\n", dlc_status_message());
    return 1;
  }
  printf("%zu\n", (size_t)TINY_TINY_Y_BYTES(4));
  for (size_t i = 0; i < TINY_TINY_Y_BYTES(4) / sizeof(float); i++)
    printf("%.9g\n", y[i]);
  dlc_session_release(session);
  dlc_program_release(program);
  return 0;
}
