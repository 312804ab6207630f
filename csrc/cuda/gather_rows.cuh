// gather_rows on CUDA: one launch for up to kMaxTensors tensors: a flat range of blocks per
// tensor, each thread moving a few units (1..16 bytes: the widest power of two that the row
// layout, strides and pointers allow) through up to kMaxDims collapsed trailing dims. It runs
// on the current stream and reads nothing back on the host: index values out of range trip a
// device-side assert and are never dereferenced. Its checks are in ../ops/gather_rows.h.
// Part of the translation unit early_exit.cu, which registers it (gather_rows gets none of its
// own: each costs minutes of build): included only there, hence the unnamed namespace.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/index_select.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <vector>

#include "../ops/gather_rows.h"

namespace gfkernels {
namespace {

constexpr int kMaxDims = 6;
constexpr int kMaxTensors = 16;
constexpr int kGatherThreads = 256;
constexpr int kGatherItems = 4;  // units per thread
constexpr int64_t kUnitsPerBlock = kGatherThreads * kGatherItems;

// One tensor's row layout, in units of `unit` bytes: the source row r starts at
// src + index[r] * row_stride units and its element u (row-major over sizes) sits at
// sum_d coord_d(u) * strides[d]; the destination row is contiguous.
struct TensorMeta {
  const char* src;
  char* dst;
  int64_t row_stride;
  int64_t row_units;
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxDims];
  int64_t block_begin;
  int32_t ndim;
  int32_t unit;
};

struct GatherBatch {
  TensorMeta t[kMaxTensors];
  int32_t count;
};

template <typename U>
__device__ __forceinline__ void move_unit(const char* src, char* dst, int64_t src_unit,
                                          int64_t dst_unit) {
  reinterpret_cast<U*>(dst)[dst_unit] = reinterpret_cast<const U*>(src)[src_unit];
}

__global__ void __launch_bounds__(kGatherThreads)
gather_kernel(const GatherBatch batch, const int64_t* __restrict__ index, int64_t n, int64_t N) {
  int t = 0;
  while (t + 1 < batch.count && static_cast<int64_t>(blockIdx.x) >= batch.t[t + 1].block_begin)
    ++t;
  const TensorMeta& m = batch.t[t];
  const int64_t total = n * m.row_units;
  const int64_t base = (static_cast<int64_t>(blockIdx.x) - m.block_begin) * kUnitsPerBlock;
#pragma unroll
  for (int k = 0; k < kGatherItems; ++k) {
    const int64_t u = base + k * kGatherThreads + threadIdx.x;
    if (u >= total) break;
    const int64_t r = u / m.row_units;
    int64_t j = u - r * m.row_units;
    const int64_t row = index[r];
    CUDA_KERNEL_ASSERT(row >= 0 && row < N && "gather_rows: index values must lie in [0, N)");
    if (row < 0 || row >= N) continue;
    int64_t offset = row * m.row_stride;
    for (int d = m.ndim - 1; d >= 0; --d) {
      const int64_t size = m.sizes[d];
      const int64_t q = d > 0 ? j / size : 0;
      offset += (j - q * size) * m.strides[d];
      j = q;
    }
    switch (m.unit) {
      case 16: move_unit<uint4>(m.src, m.dst, offset, u); break;
      case 8: move_unit<uint64_t>(m.src, m.dst, offset, u); break;
      case 4: move_unit<uint32_t>(m.src, m.dst, offset, u); break;
      case 2: move_unit<uint16_t>(m.src, m.dst, offset, u); break;
      default: move_unit<uint8_t>(m.src, m.dst, offset, u); break;
    }
  }
}

// Fills m for tensor t (with output out); false when its row needs more than kMaxDims dims.
bool describe(const at::Tensor& t, const at::Tensor& out, TensorMeta& m) {
  const RowLayout layout = row_layout(t);
  const std::vector<int64_t>& sizes = layout.sizes;
  const std::vector<int64_t>& strides = layout.strides;
  if (static_cast<int>(sizes.size()) > kMaxDims) return false;
  const int64_t e = static_cast<int64_t>(t.element_size());
  int64_t unit = e;
  if (!sizes.empty() && strides.back() == 1) {
    // widen the unit while it divides the contiguous inner run, every stride and both bases
    const auto src_addr = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    const auto dst_addr = reinterpret_cast<uintptr_t>(out.const_data_ptr());
    while (unit < 16) {
      const int64_t w = unit * 2;
      bool ok = (sizes.back() * e) % w == 0 && (t.stride(0) * e) % w == 0 &&
                src_addr % w == 0 && dst_addr % w == 0;
      for (size_t d = 0; d + 1 < sizes.size(); ++d) ok = ok && (strides[d] * e) % w == 0;
      if (!ok) break;
      unit = w;
    }
  }
  const int64_t per = unit / e;  // elements per unit (1 unless the inner run is contiguous)
  m.src = static_cast<const char*>(t.const_data_ptr());
  m.dst = static_cast<char*>(out.data_ptr());
  m.row_stride = t.stride(0) * e / unit;
  m.ndim = static_cast<int32_t>(sizes.size());
  m.unit = static_cast<int32_t>(unit);
  m.row_units = 1;
  for (int d = 0; d < m.ndim; ++d) {
    const bool inner = d == m.ndim - 1;
    m.sizes[d] = inner ? sizes[d] / per : sizes[d];
    m.strides[d] = inner && per > 1 ? 1 : strides[d] * e / unit;
    m.row_units *= m.sizes[d];
  }
  return true;
}

void launch_gather(GatherBatch& batch, int64_t blocks, const int64_t* index, int64_t n,
                   int64_t N, cudaStream_t stream) {
  if (batch.count == 0 || blocks == 0) return;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "gather_rows: too many rows to gather in one launch");
  gather_kernel<<<static_cast<unsigned>(blocks), kGatherThreads, 0, stream>>>(batch, index, n, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  batch.count = 0;
}

std::vector<at::Tensor> gather_rows_cuda(at::TensorList tensors, const at::Tensor& index,
                                         int64_t n) {
  const c10::cuda::CUDAGuard guard(index.device());
  std::vector<at::Tensor> outs = prepare_gather_rows(tensors, index, n);
  if (tensors.empty()) return outs;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor rows = index.slice(0, 0, n).contiguous();
  const int64_t N = tensors[0].size(0);
  GatherBatch batch;
  batch.count = 0;
  int64_t blocks = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    at::Tensor& out = outs[i];
    if (out.numel() == 0) continue;
    TensorMeta m;
    if (!describe(t, out, m)) {  // rare: a row of more than kMaxDims non-mergeable dims
      at::index_select_out(out, t, 0, rows);
      continue;
    }
    if (batch.count == kMaxTensors) {
      launch_gather(batch, blocks, rows.const_data_ptr<int64_t>(), n, N, stream);
      blocks = 0;
    }
    m.block_begin = blocks;
    batch.t[batch.count++] = m;
    blocks += (n * m.row_units + kUnitsPerBlock - 1) / kUnitsPerBlock;
  }
  launch_gather(batch, blocks, rows.const_data_ptr<int64_t>(), n, N, stream);
  return outs;
}

}  // namespace
}  // namespace gfkernels
