// A non-owning 2-D view that says where its memory lives: pointer, dtype, device, shape and row
// stride. It is how tensors cross into a backend whose memory the host cannot read (CUDA); the
// CPU code keeps its Eigen views (core/tensor.hpp).
//
//   wegeft::TensorView x{ptr, wegeft::DType::BF16, wegeft::Device::cuda, 2048, 768, 776};
//   auto u = x.block(0, 768, 2048, 8);     // the 8 columns after the first 768
#pragma once

#include <cstddef>
#include <string>

#include "wegeft/core/dtype.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

enum class Device { cpu, cuda };

inline const char* device_name(Device d) {
  return d == Device::cpu ? "cpu" : "cuda";
}

/// rows x cols elements of `dtype`, row-major, row i starting ld elements after row i - 1.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::cpu;
  Index rows = 0, cols = 0, ld = 0;

  /// "[rows, cols] BF16 cuda (ld 776)" for messages.
  std::string describe() const {
    return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "] " + dtype_name(dtype) +
           " " + device_name(device) + " (ld " + std::to_string(ld) + ")";
  }

  /// Rows [r0, r0 + nr) and columns [c0, c0 + nc) of this view (checked).
  TensorView block(Index r0, Index c0, Index nr, Index nc) const {
    WEGEFT_CHECK(r0 >= 0 && c0 >= 0 && nr >= 0 && nc >= 0 && r0 + nr <= rows && c0 + nc <= cols,
                 "block [" << r0 << ":" << r0 + nr << ", " << c0 << ":" << c0 + nc
                           << "] lies outside the view " << describe());
    TensorView v = *this;
    v.data = static_cast<char*>(data) +
             static_cast<std::ptrdiff_t>((r0 * ld + c0) * static_cast<Index>(dtype_size(dtype)));
    v.rows = nr;
    v.cols = nc;
    return v;
  }
};

}  // namespace wegeft
