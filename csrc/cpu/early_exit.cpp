// early_exit on the CPU (its shared checks are in ../ops/early_exit.cpp).
//
// Pass 1 runs over blocks of rows in parallel: each row's confidence (max softmax
// probability = 1 / sum_j exp(x_j - max x), float32 for 16/32-bit logits with a vectorisable
// exp, float64 for float64 logits), the exiting rows' logits and step written to their place
// in the full batch, and a survivor count per block. Pass 2 is the stable compaction: an
// exclusive scan of the block counts, then every block writes its survivors (and, after all
// survivors, its exiting rows) in order. With one block (small n) both passes are serial.
//
// gather_rows, the compaction of every per-sample tensor that follows, is in gather_rows.h and
// is compiled and registered here: it has no translation unit of its own.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <limits>

#include "../ops/early_exit.h"
#include "gather_rows.h"

// The 8-lane vector helpers below are always inlined, so the ABI note about passing AVX-sized
// vectors without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace gfkernels {

namespace {

// Confidence of a float32 row, in 8-lane vectors (GCC/Clang vector extensions: two SSE
// registers by default, one AVX register in the AVX+FMA clone picked at run time).
typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
constexpr int kLanes = 8;

// exp(x) for x <= 0 (or NaN, which it propagates): Cephes' expf (range reduction by ln 2 and
// a degree-5 polynomial, within 2 ulp of expf), without branches or calls. exp(0) == 1
// exactly. x is first clamped to -87: exp(-87) ~ 1.6e-38 stands in for anything smaller,
// which cannot change a sum that holds a 1 (the max's own term).
__attribute__((always_inline)) inline v8f exp_nonpositive(v8f x) {
  const v8f lo = v8f{} - 87.0f;
  x = x < lo ? lo : x;  // NaN compares false and stays
  const v8f fx = x * 1.44269504088896341f;
  const v8f shifted = fx + 12582912.0f;  // 1.5 * 2^23: round to nearest, n in the low bits
  const v8f n = shifted - 12582912.0f;
  const v8f r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  v8f p = v8f{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const v8f y = p * r * r + r + 1.0f;
  const v8u bits = (((v8u)shifted - 0x4B400000u) + 127u) << 23;  // 2^n
  return y * (v8f)bits;
}

__attribute__((always_inline)) inline v8f load_lanes(const float* x, int64_t count, float fill) {
  v8f v;
  if (count >= kLanes) {
    std::memcpy(&v, x, sizeof(v));
  } else {
    for (int l = 0; l < kLanes; ++l) v[l] = l < count ? x[l] : fill;
  }
  return v;
}

// 1 / sum_j exp(x_j - max x): NaN when a logit is NaN, when the max is +inf, or when every
// logit is -inf (x - max is NaN there), as torch.softmax(x).max() gives.
__attribute__((always_inline)) inline float confidence_body(const float* __restrict x,
                                                            int64_t K) {
  const float ninf = -std::numeric_limits<float>::infinity();
  v8f mv = v8f{} + ninf;
  for (int64_t j = 0; j < K; j += kLanes) {
    const v8f v = load_lanes(x + j, K - j, ninf);
    mv = v > mv ? v : mv;  // a NaN never wins: it is caught by the sum below
  }
  float m = ninf;
  for (int l = 0; l < kLanes; ++l) m = mv[l] > m ? mv[l] : m;
  v8f sv = {};
  for (int64_t j = 0; j < K; j += kLanes) {
    sv += exp_nonpositive(load_lanes(x + j, K - j, ninf) - m);  // padding adds ~1e-38
  }
  float sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum += sv[l];
  return 1.0f / sum;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx,fma"), optimize("fp-contract=fast"))) float confidence_avx(const float* x, int64_t K) {
  return confidence_body(x, K);
}
const bool kHaveAvx = __builtin_cpu_supports("avx") && __builtin_cpu_supports("fma");
#endif

float confidence(const float* x, int64_t K) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (kHaveAvx) return confidence_avx(x, K);
#endif
  return confidence_body(x, K);
}

double confidence(const double* x, int64_t K) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < K; ++j) m = x[j] > m ? x[j] : m;
  double sum = 0.0;
  for (int64_t j = 0; j < K; ++j) sum += std::exp(x[j] - m);
  return 1.0 / sum;
}

template <typename T>
using acc_type_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Rows per block of pass 1 / the compaction; n <= kSerialRows runs as one block.
constexpr int64_t kSerialRows = 1 << 14;

template <typename scalar_t>
void early_exit_impl(const at::Tensor& logits, double threshold, const int64_t* active,
                     at::Tensor& out_logits, at::Tensor& exit_step, int64_t step,
                     int64_t* keep, int64_t* num_keep_out) {
  using acc_t = acc_type_of<scalar_t>;
  const int64_t n = logits.size(0), K = logits.size(1);
  const acc_t thr = static_cast<acc_t>(threshold);  // compared in the confidence's type
  const bool all_exit = std::isinf(thr) && thr < 0;
  const scalar_t* src = logits.const_data_ptr<scalar_t>();
  const int64_t sn = logits.stride(0), sk = logits.stride(1);
  scalar_t* dst = out_logits.mutable_data_ptr<scalar_t>();
  const int64_t dn = out_logits.stride(0), dk = out_logits.stride(1);
  int64_t* steps = exit_step.mutable_data_ptr<int64_t>();
  const int64_t ds = exit_step.stride(0);
  const bool direct = std::is_same_v<scalar_t, acc_t> && sk == 1;

  // Pass 1, parallel over rows: decide, and write the exiting rows.
  std::vector<uint8_t> exits(n);
  const int64_t rows_per_task = std::max<int64_t>(1, 16384 / K);
  at::parallel_for(0, n, all_exit ? n : rows_per_task, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> row(direct || all_exit ? 0 : K);
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* x = src + i * sn;
      bool exit = all_exit;
      if (!exit) {
        const acc_t* xr = reinterpret_cast<const acc_t*>(x);  // used only when direct
        if (!direct) {
          for (int64_t j = 0; j < K; ++j) row[j] = static_cast<acc_t>(x[j * sk]);
          xr = row.data();
        }
        exit = confidence(xr, K) >= thr;  // false for NaN
      }
      exits[i] = exit;
      if (exit) {
        const int64_t a = active[i];
        scalar_t* y = dst + a * dn;
        if (sk == 1 && dk == 1) {
          std::memcpy(y, x, K * sizeof(scalar_t));
        } else {
          for (int64_t j = 0; j < K; ++j) y[j * dk] = x[j * sk];
        }
        steps[a * ds] = step;
      }
    }
  });

  // Pass 2, the stable compaction: serial for small n; else a parallel scan over blocks
  // (count the survivors of each block, exclusive scan of the counts, write).
  const int64_t block = n <= kSerialRows ? std::max<int64_t>(n, 1)
                                         : (n + 4 * at::get_num_threads() - 1) /
                                               (4 * at::get_num_threads());
  const int64_t num_blocks = (n + block - 1) / block;
  std::vector<int64_t> survivors(num_blocks + 1, 0);
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t count = 0;
      for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) count += !exits[i];
      survivors[b + 1] = count;
    }
  });
  for (int64_t b = 0; b < num_blocks; ++b) survivors[b + 1] += survivors[b];
  const int64_t num_keep = survivors[num_blocks];
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t kept = survivors[b];                 // survivors before this block
      int64_t gone = num_keep + b * block - kept;  // exiting rows before it, after survivors
      for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) {
        if (exits[i]) {
          keep[gone++] = i;
        } else {
          keep[kept++] = i;
        }
      }
    }
  });
  *num_keep_out = num_keep;
}

std::tuple<at::Tensor, at::Tensor> early_exit_cpu(const at::Tensor& logits,
                                                  const at::Tensor& threshold,
                                                  const at::Tensor& active,
                                                  at::Tensor& out_logits, at::Tensor& exit_step,
                                                  int64_t step) {
  at::Tensor keep, num_keep;
  std::tie(keep, num_keep) = prepare_early_exit(logits, threshold, active, out_logits, exit_step);
  const int64_t n = logits.size(0), B = out_logits.size(0);
  const at::Tensor act = active.contiguous();
  const int64_t* a = act.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_INDEX(a[i] >= 0 && a[i] < B, "early_exit: active values must lie in [0, B) with "
                      "B = ", B, " rows of out_logits, got active[", i, "] = ", a[i]);
  }
  // Each row of out_logits is written once: a repeated value is refused (the message is
  // gfkernels/contract.py's check_distinct, which the other backends use).
  std::vector<int64_t> times(n > 1 ? B : 0, 0);
  for (int64_t i = 0; i < n && n > 1; ++i) ++times[a[i]];
  for (int64_t i = 0; i < n && n > 1; ++i) {
    TORCH_CHECK_VALUE(times[a[i]] == 1, "early_exit: active values must be distinct, got ", a[i],
                      " ", times[a[i]], " times");
  }
  const double thr = threshold.item<double>();  // a CPU tensor here: no device sync
  TORCH_CHECK_VALUE(!std::isnan(thr), "early_exit: threshold must not be NaN");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "early_exit",
                                  [&] {
    early_exit_impl<scalar_t>(logits, thr, a, out_logits, exit_step, step,
                              keep.mutable_data_ptr<int64_t>(),
                              num_keep.mutable_data_ptr<int64_t>());
  });
  return {keep, num_keep};
}

}  // namespace

TORCH_LIBRARY_IMPL(gfkernels, CPU, m) {
  m.impl("early_exit", &early_exit_cpu);
  m.impl("gather_rows", &gather_rows_cpu);
}

}  // namespace gfkernels
