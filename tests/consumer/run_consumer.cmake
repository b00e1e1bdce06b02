# Builds tests/consumer/app against the source tree (add_subdirectory, with and without a build
# type of the parent's own) and against an installed shmap (find_package), and a program
# without CMake against the installed library (pkg-config); runs the installed tool.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK})

# 1. add_subdirectory from a parent that chose Debug; it must stay Debug.
run(${CMAKE_COMMAND} -S ${APP} -B ${WORK}/sub -DCMAKE_BUILD_TYPE=Debug -DSHMAP_MODE=subdirectory
    -DSHMAP_SOURCE=${SHMAP_SOURCE})
run(${CMAKE_COMMAND} --build ${WORK}/sub -j2)
run(${WORK}/sub/consumer_app)
# ... and from a parent that chose none: it must stay none (configure only).
run(${CMAKE_COMMAND} -S ${APP} -B ${WORK}/sub-none -DSHMAP_MODE=subdirectory
    -DSHMAP_SOURCE=${SHMAP_SOURCE})

# 2. install (the library alone), then find_package
run(${CMAKE_COMMAND} -S ${SHMAP_SOURCE} -B ${WORK}/lib -DCMAKE_BUILD_TYPE=Release
    -DSHMAP_BUILD_TESTS=OFF -DSHMAP_BUILD_EXAMPLES=OFF -DSHMAP_BUILD_TOOLS=OFF
    -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
run(${CMAKE_COMMAND} --build ${WORK}/lib -j2)
run(${CMAKE_COMMAND} --install ${WORK}/lib)
run(${CMAKE_COMMAND} -S ${APP} -B ${WORK}/pkg -DCMAKE_BUILD_TYPE=Release -DSHMAP_MODE=package
    -DCMAKE_PREFIX_PATH=${WORK}/prefix)
run(${CMAKE_COMMAND} --build ${WORK}/pkg -j2)
run(${WORK}/pkg/consumer_app)

# 3. No CMake: the flags pkg-config gives for the installed shmap.pc, and nothing else.
find_program(PKG_CONFIG pkg-config REQUIRED)
set(ENV{PKG_CONFIG_PATH} ${WORK}/prefix/lib/pkgconfig)
if(NOT EXISTS ${WORK}/prefix/lib/pkgconfig/shmap.pc)
  file(GLOB pcs ${WORK}/prefix/lib*/*/pkgconfig ${WORK}/prefix/lib*/pkgconfig)
  set(ENV{PKG_CONFIG_PATH} "${pcs}")
endif()
run(${PKG_CONFIG} --cflags --libs shmap)
string(STRIP "${last_output}" flags)
separate_arguments(flags UNIX_COMMAND "${flags}")
run(g++ ${APP}/main.cpp -o ${WORK}/plain_app ${flags})
run(${WORK}/plain_app)

# 4. The tool and its manual, installed from the build under test (already compiled).
if(CHECK_TOOL)
  run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK}/full)
  run(${WORK}/full/bin/shmap --version)
  if(NOT last_output MATCHES "^shmap [0-9]")
    message(FATAL_ERROR "installed shmap --version printed: ${last_output}")
  endif()
  if(NOT EXISTS ${WORK}/full/share/man/man1/shmap.1 OR NOT EXISTS ${WORK}/full/share/doc/shmap/LICENSE)
    message(FATAL_ERROR "the man page or the licence was not installed")
  endif()
endif()
message(STATUS "consumer: add_subdirectory (Debug and none), find_package, pkg-config and the "
               "installed tool all work")
