// early_exit's contract, shared by its CPU and CUDA kernels: argument checks (metadata only:
// the CPU kernel checks index values itself, the CUDA kernel asserts on the device) and output
// allocation. Schema and definitions are in early_exit.cpp; gather_rows' contract is in
// gather_rows.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace gfkernels {

// Checks early_exit's arguments and allocates its outputs: keep (n,) and num_keep (), int64, on
// the logits' device (uninitialised).
std::tuple<at::Tensor, at::Tensor> prepare_early_exit(const at::Tensor& logits,
                                                      const at::Tensor& threshold,
                                                      const at::Tensor& active,
                                                      const at::Tensor& out_logits,
                                                      const at::Tensor& exit_step);

}  // namespace gfkernels
