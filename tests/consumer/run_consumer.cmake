# Builds tests/consumer as a separate CMake project that uses wegeft either from an installed copy
# (MODE=find_package) or from the source tree (MODE=add_subdirectory), then runs it.
# Arguments: MODE, SOURCE_DIR, BUILD_DIR (the calling build, built), PRECOMPILED (1 when that build has
# wegeft::precompiled), WORK_DIR, CXX.
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer step failed (${rc}): ${ARGV}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(consumer_args -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/consumer-build
    -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release -DCONSUMER_MODE=${MODE})
if(MODE STREQUAL "find_package")
  # A configured tree whose tool was not built still installs (headers and package files).
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/wegeft-build -DCMAKE_CXX_COMPILER=${CXX}
      -DWEGEFT_BUILD_TESTS=OFF -DWEGEFT_BUILD_EXAMPLES=OFF -DWEGEFT_BUILD_BENCHMARKS=OFF -DWEGEFT_BUILD_TOOLS=ON
      -DWEGEFT_BUILD_PRECOMPILED=OFF -DWEGEFT_INSTALL=ON -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/unbuilt)
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/wegeft-build)
  foreach(f include/wegeft/wegeft.hpp include/wegeft/io.hpp)
    if(NOT EXISTS ${WORK_DIR}/unbuilt/${f})
      message(FATAL_ERROR "cmake --install of an unbuilt tree did not install ${f}")
    endif()
  endforeach()
  # The consumer uses the installed copy of the calling build (BUILD_DIR, built): with the
  # compiled wegeft::precompiled and the optional targets it found.
  run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCONSUMER_PRECOMPILED=${PRECOMPILED})
else()
  list(APPEND consumer_args -DWEGEFT_SOURCE_DIR=${SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} ${consumer_args})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run(${WORK_DIR}/consumer-build/consumer)
if(MODE STREQUAL "find_package")
  run(${WORK_DIR}/consumer-build/consumer_blas)
  if(PRECOMPILED)
    run(${WORK_DIR}/consumer-build/consumer_precompiled)
  endif()
endif()
