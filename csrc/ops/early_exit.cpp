// early_exit: its schema and the checks every kernel shares. Kernels live in ../cpu and
// ../cuda and register themselves per dispatch key; fake kernels and autograd are registered
// from Python (gfkernels/ops/early_exit.py). The library fragment below also defines
// gather_rows' schema (gather_rows.h: that op has no translation unit of its own).
#include "early_exit.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <utility>

#include "gather_rows.h"

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

TORCH_LIBRARY_FRAGMENT(gfkernels, m) {
  // threshold is a 0-dim floating tensor (on the CPU, or on the logits' device); out_logits and
  // exit_step are written in place. keep (n,) int64, num_keep 0-dim int64.
  m.def(
      "early_exit(Tensor logits, Tensor threshold, Tensor active, Tensor(a!) out_logits, "
      "Tensor(b!) exit_step, int step) -> (Tensor, Tensor)");
  define_gather_rows_schema(m);
}

}  // namespace gfkernels

