# Builds tests/consumer/app twice: against the source tree and against an installed shmap.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK})
set(common -DCMAKE_BUILD_TYPE=Release)

# 1. add_subdirectory
run(${CMAKE_COMMAND} -S ${APP} -B ${WORK}/sub ${common} -DSHMAP_MODE=subdirectory
    -DSHMAP_SOURCE=${SHMAP_SOURCE})
run(${CMAKE_COMMAND} --build ${WORK}/sub -j2)
run(${WORK}/sub/consumer_app)

# 2. install, then find_package
run(${CMAKE_COMMAND} -S ${SHMAP_SOURCE} -B ${WORK}/lib ${common} -DSHMAP_BUILD_TESTS=OFF
    -DSHMAP_BUILD_EXAMPLES=OFF -DSHMAP_BUILD_TOOLS=OFF -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
run(${CMAKE_COMMAND} --build ${WORK}/lib -j2)
run(${CMAKE_COMMAND} --install ${WORK}/lib)
run(${CMAKE_COMMAND} -S ${APP} -B ${WORK}/pkg ${common} -DSHMAP_MODE=package
    -DCMAKE_PREFIX_PATH=${WORK}/prefix)
run(${CMAKE_COMMAND} --build ${WORK}/pkg -j2)
run(${WORK}/pkg/consumer_app)
message(STATUS "consumer: add_subdirectory and find_package both work")
