// early_exit's and gather_rows' contract, shared by their CPU and CUDA kernels: argument checks
// (metadata only: the CPU kernels check index values themselves, the CUDA kernels assert on the
// device), output allocation, and the layout of a gathered row. Schemas and definitions are in
// early_exit.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace gfkernels {

// Checks early_exit's arguments and allocates its outputs: keep (n,) and num_keep (), int64, on
// the logits' device (uninitialised).
std::tuple<at::Tensor, at::Tensor> prepare_early_exit(const at::Tensor& logits,
                                                      const at::Tensor& threshold,
                                                      const at::Tensor& active,
                                                      const at::Tensor& out_logits,
                                                      const at::Tensor& exit_step);

// Checks gather_rows' arguments and allocates its outputs: one contiguous (n, *t.shape[1:])
// tensor per input tensor t (uninitialised).
std::vector<at::Tensor> prepare_gather_rows(at::TensorList tensors, const at::Tensor& index,
                                            int64_t n);

// One row of a tensor (everything after the leading dim) as few strided dims as possible:
// size-1 dims dropped, mergeable dims merged, outermost first; strides in elements.
struct RowLayout {
  std::vector<int64_t> sizes, strides;
  bool contiguous() const { return sizes.empty() || (sizes.size() == 1 && strides[0] == 1); }
};
RowLayout row_layout(const at::Tensor& t);

}  // namespace gfkernels
