/* Compiled by CTest as C11 and as C++ with every warning an error: the
 * runtime's public headers must stay clean in both languages. */
#include "dlc/program.h"
#include "dlc/runtime.h"

int main(void) {
  dlc_session_options options;
  dlc_tensor tensor = {0, DLC_F32, 0, {0}};
  (void)tensor;
  return dlc_session_options_initialize(&options) == DLC_OK ? 0 : 1;
}
