// early_exit and gather_rows: their schemas and the checks every kernel shares. Kernels live
// in ../cpu and ../cuda and register themselves per dispatch key; fake kernels and autograd are
// registered from Python (gfkernels/ops/early_exit.py).
#include "early_exit.h"

#include <ATen/ops/empty.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <utility>

namespace gfkernels {

std::tuple<at::Tensor, at::Tensor> prepare_early_exit(const at::Tensor& logits,
                                                      const at::Tensor& threshold,
                                                      const at::Tensor& active,
                                                      const at::Tensor& out_logits,
                                                      const at::Tensor& exit_step) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "early_exit: logits must be 2-D (n, K), got shape ",
                    logits.sizes());
  const at::ScalarType t = logits.scalar_type();
  TORCH_CHECK_TYPE(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble,
                   "early_exit: logits must be float16, bfloat16, float32 or float64, got ", t);
  TORCH_CHECK_VALUE(logits.size(1) > 0, "early_exit: logits must have K > 0 classes, got shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(threshold.dim() == 0, "early_exit: threshold must be a 0-dim tensor, got shape ",
                    threshold.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(threshold.scalar_type()),
                   "early_exit: threshold must be a floating tensor, got ",
                   threshold.scalar_type());
  TORCH_CHECK_VALUE(threshold.device() == logits.device() || threshold.device().is_cpu(),
                    "early_exit: threshold must be on the CPU or on the logits' device ",
                    logits.device(), ", got ", threshold.device());
  TORCH_CHECK_TYPE(active.scalar_type() == at::kLong, "early_exit: active must be int64, got ",
                   active.scalar_type());
  TORCH_CHECK_VALUE(active.dim() == 1 && active.size(0) == logits.size(0),
                    "early_exit: active must be (n,) with n = ", logits.size(0),
                    " rows of logits, got shape ", active.sizes());
  TORCH_CHECK_VALUE(out_logits.dim() == 2 && out_logits.size(1) == logits.size(1),
                    "early_exit: out_logits must be (B, K) with K = ", logits.size(1),
                    ", got shape ", out_logits.sizes());
  TORCH_CHECK_TYPE(out_logits.scalar_type() == t, "early_exit: out_logits must have the logits' "
                   "dtype ", t, ", got ", out_logits.scalar_type());
  TORCH_CHECK_TYPE(exit_step.scalar_type() == at::kLong, "early_exit: exit_step must be int64, got ",
                   exit_step.scalar_type());
  TORCH_CHECK_VALUE(exit_step.dim() == 1 && exit_step.size(0) == out_logits.size(0),
                    "early_exit: exit_step must be (B,) with B = ", out_logits.size(0),
                    " rows of out_logits, got shape ", exit_step.sizes());
  for (const auto& [name, other] :
       {std::pair<const char*, const at::Tensor*>{"active", &active},
        {"out_logits", &out_logits},
        {"exit_step", &exit_step}}) {
    TORCH_CHECK_VALUE(other->device() == logits.device(), "early_exit: ", name,
                      " must be on the logits' device ", logits.device(), ", got ",
                      other->device());
  }
  const auto options = logits.options().dtype(at::kLong);
  return {at::empty({logits.size(0)}, options), at::empty({}, options)};
}

std::vector<at::Tensor> prepare_gather_rows(at::TensorList tensors, const at::Tensor& index,
                                            int64_t n) {
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

RowLayout row_layout(const at::Tensor& t) {
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

TORCH_LIBRARY_FRAGMENT(gfkernels, m) {
  // threshold is a 0-dim floating tensor (on the CPU, or on the logits' device); out_logits and
  // exit_step are written in place. keep (n,) int64, num_keep 0-dim int64.
  m.def(
      "early_exit(Tensor logits, Tensor threshold, Tensor active, Tensor(a!) out_logits, "
      "Tensor(b!) exit_step, int step) -> (Tensor, Tensor)");
  // n is a host int (the caller read num_keep once): outputs are contiguous (n, ...).
  m.def("gather_rows(Tensor[] tensors, Tensor index, SymInt n) -> Tensor[]");
}

}  // namespace gfkernels
