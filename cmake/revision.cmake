# Writes OUT, a header defining WRENN_REVISION: the source revision the binary is built from.
# Run at every build (cmake -P), so that it never goes stale between configures; the file is
# rewritten only when the revision changes, so nothing rebuilds otherwise. Order of sources:
# $WRENN_REVISION from the environment (a packager building from a tarball), then
# `git describe --always --dirty` of SRC, then "unknown".
set(revision "$ENV{WRENN_REVISION}")
if(revision STREQUAL "")
  find_package(Git QUIET)
  if(GIT_FOUND)
    execute_process(COMMAND "${GIT_EXECUTABLE}" -C "${SRC}" describe --always --dirty --abbrev=12
                    OUTPUT_VARIABLE revision OUTPUT_STRIP_TRAILING_WHITESPACE
                    ERROR_QUIET RESULT_VARIABLE failed)
    if(failed)
      set(revision "")
    endif()
  endif()
endif()
if(revision STREQUAL "")
  set(revision "unknown")
endif()
set(text "#pragma once\n#define WRENN_REVISION \"${revision}\"\n")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
