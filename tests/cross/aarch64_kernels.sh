#!/usr/bin/env bash
# Builds the SIMD kernel tests (tests/test_kernels.cpp) for aarch64 with Debian's cross compiler,
# so Eigen takes its NEON path, and runs them under qemu-aarch64, with OpenMP (two threads).
#   aarch64_kernels.sh SOURCE_DIR WORK_DIR CXX QEMU EIGEN_DIR CATCH2_PARENT_DIR JSON_PARENT_DIR
set -euo pipefail
src=$1 work=$2 cxx=$3 qemu=$4 eigen=$5 catch2=$6 json=$7
mkdir -p "$work/include"
# Only the header-only dependencies, not the host's whole /usr/include (its C library is x86's).
ln -sfn "$catch2/catch2" "$work/include/catch2"
ln -sfn "$json/nlohmann" "$work/include/nlohmann"
# The two sources compile side by side, then link.
compile() {
  "$cxx" -std=c++20 -O2 -fopenmp -Wall -Wextra -Wpedantic -Wshadow -Wno-missing-field-initializers \
    -DWEGEFT_ENABLE_ASSERTS -DWEGEFT_GOLDEN_DIR="\"$src/tests/golden\"" \
    -I"$src/include" -isystem "$eigen" -isystem "$work/include" -c "$1" -o "$2"
}
compile "$src/tests/catch_main.cpp" "$work/catch_main.o" &
main_pid=$!
compile "$src/tests/test_kernels.cpp" "$work/test_kernels.o"
wait "$main_pid"
"$cxx" -static -fopenmp "$work/catch_main.o" "$work/test_kernels.o" -o "$work/kernel_tests_aarch64"
OMP_NUM_THREADS=2 "$qemu" "$work/kernel_tests_aarch64"
