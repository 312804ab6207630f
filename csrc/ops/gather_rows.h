// gather_rows' contract, shared by its CPU and CUDA kernels: its schema, the argument checks
// (metadata only: the CPU kernel checks index values itself, the CUDA kernel asserts on the
// device), output allocation, and the layout of a gathered row. Header-only (inline), because
// gather_rows has no translation unit of its own (each costs about a minute of build): the
// schema is defined in early_exit.cpp's library fragment, the kernels (../cpu/gather_rows.h,
// ../cuda/gather_rows.cuh) are compiled with early_exit's. Fake kernel and autograd are
// registered from Python (gfkernels/ops/gather_rows.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <vector>

namespace gfkernels {

// Defines gather_rows' schema in the library fragment `m`. n is a host int (the caller read
// num_keep once): outputs are contiguous (n, ...).
inline void define_gather_rows_schema(torch::Library& m) {
  m.def("gather_rows(Tensor[] tensors, Tensor index, SymInt n) -> Tensor[]");
}

// Checks gather_rows' arguments and allocates its outputs: one contiguous (n, *t.shape[1:])
// tensor per input tensor t (uninitialised).
inline std::vector<at::Tensor> prepare_gather_rows(at::TensorList tensors,
                                                   const at::Tensor& index, int64_t n) {
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, "gather_rows: index must be int64, got ",
                   index.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 1, "gather_rows: index must be 1-D, got shape ",
                    index.sizes());
  TORCH_CHECK_VALUE(n >= 0 && n <= index.size(0), "gather_rows: n must lie in [0, ",
                    index.size(0), "] (the length of index), got ", n);
  std::vector<at::Tensor> outs;
  outs.reserve(tensors.size());
  for (const auto i : c10::irange(tensors.size())) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.dim() >= 1, "gather_rows: tensors[", i,
                      "] must have a leading (batch) dimension, got a 0-dim tensor");
    TORCH_CHECK_VALUE(t.size(0) == tensors[0].size(0), "gather_rows: tensors[", i,
                      "] has leading size ", t.size(0), " but tensors[0] has ",
                      tensors[0].size(0), " (all must share the batch dimension)");
    TORCH_CHECK_VALUE(t.device() == index.device(), "gather_rows: tensors[", i,
                      "] must be on the index's device ", index.device(), ", got ", t.device());
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
    shape[0] = n;
    outs.push_back(at::empty(shape, t.options()));
  }
  return outs;
}

// One row of a tensor (everything after the leading dim) as few strided dims as possible:
// size-1 dims dropped, mergeable dims merged, outermost first; strides in elements.
struct RowLayout {
  std::vector<int64_t> sizes, strides;
  bool contiguous() const { return sizes.empty() || (sizes.size() == 1 && strides[0] == 1); }
};

inline RowLayout row_layout(const at::Tensor& t) {
  RowLayout r;
  for (int64_t d = 1; d < t.dim(); ++d) {
    if (t.size(d) == 1) continue;
    if (!r.sizes.empty() && r.strides.back() == t.stride(d) * t.size(d)) {
      r.sizes.back() *= t.size(d);
      r.strides.back() = t.stride(d);
    } else {
      r.sizes.push_back(t.size(d));
      r.strides.push_back(t.stride(d));
    }
  }
  return r;
}

}  // namespace gfkernels
