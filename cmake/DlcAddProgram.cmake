# dlc_add_program(NAME <name> SOURCE <file.dl>
#                 [OUTPUT_DIR <dir>] [CPU <llvm-cpu>] [DEPENDS <files>...])
#
# Compiles <file.dl> with `dlc compile --emit=lib` at build time, and again
# whenever the .dl file (or a DEPENDS file) changes, into OUTPUT_DIR
# (default: ${CMAKE_CURRENT_BINARY_DIR}/dlc): <name>.so, lib<name>.a and
# <name>.h. Defines the target <name>: linking it gives the header's
# directory, lib<name>.a and the runtime (dlc::dlcrt), e.g.
#   target_link_libraries(app PRIVATE <name>)
# CPU names an LLVM CPU for a portable build (default: the build machine's).
#
# The compiler is the command in the DLC_COMMAND variable (a list), if set,
# else the `dlc` program found on PATH (pip install dlc).
include_guard(GLOBAL)

function(dlc_add_program)
  cmake_parse_arguments(PARSE_ARGV 0 ARG "" "NAME;SOURCE;OUTPUT_DIR;CPU" "DEPENDS")
  if(NOT ARG_NAME OR NOT ARG_SOURCE)
    message(FATAL_ERROR "dlc_add_program: NAME and SOURCE are required")
  endif()
  if(NOT ARG_NAME MATCHES "^[A-Za-z_][A-Za-z0-9_]*$")
    message(FATAL_ERROR "dlc_add_program: NAME '${ARG_NAME}' must be a C identifier")
  endif()
  if(DLC_COMMAND)
    set(command ${DLC_COMMAND})
  else()
    find_program(DLC_EXECUTABLE dlc)
    if(NOT DLC_EXECUTABLE)
      message(FATAL_ERROR "dlc_add_program: the dlc compiler is not on PATH; "
                          "install it (pip install dlc) or set DLC_COMMAND")
    endif()
    set(command ${DLC_EXECUTABLE})
  endif()
  get_filename_component(source "${ARG_SOURCE}" ABSOLUTE)
  set(dir "${ARG_OUTPUT_DIR}")
  if(NOT dir)
    set(dir "${CMAKE_CURRENT_BINARY_DIR}/dlc")
  endif()
  set(cpu)
  if(ARG_CPU)
    set(cpu --cpu ${ARG_CPU})
  endif()
  set(outputs "${dir}/${ARG_NAME}.so" "${dir}/lib${ARG_NAME}.a" "${dir}/${ARG_NAME}.h")
  add_custom_command(
    OUTPUT ${outputs}
    COMMAND ${CMAKE_COMMAND} -E make_directory "${dir}"
    COMMAND ${command} compile "${source}" --emit=lib -o "${dir}/${ARG_NAME}" ${cpu}
    DEPENDS "${source}" ${ARG_DEPENDS}
    COMMENT "dlc: compiling ${ARG_SOURCE} into lib${ARG_NAME}.a"
    VERBATIM)
  add_custom_target(${ARG_NAME}_dlc DEPENDS ${outputs})
  add_library(${ARG_NAME} INTERFACE)
  add_dependencies(${ARG_NAME} ${ARG_NAME}_dlc)
  target_include_directories(${ARG_NAME} INTERFACE "${dir}")
  target_link_libraries(${ARG_NAME} INTERFACE "${dir}/lib${ARG_NAME}.a" dlc::dlcrt)
endfunction()
