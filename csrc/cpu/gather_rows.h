// gather_rows on the CPU: one parallel pass over the kept rows; for each row, every tensor's
// row is copied (memcpy for rows whose trailing dims are contiguous, a strided loop otherwise;
// streaming stores for outputs well beyond the caches). Its checks are in ../ops/gather_rows.h.
// Part of the translation unit early_exit.cpp, which registers it (gather_rows gets none of its
// own: each costs about a minute of build): included only there, hence the unnamed namespace.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../ops/gather_rows.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace gfkernels {
namespace {

// Outputs at least this large are written with streaming stores.
constexpr int64_t kStreamingBytes = int64_t{8} << 20;

// Copies one strided row into contiguous `dst`, element by element (element size E bytes).
template <int E>
void copy_strided_row(const char* src, char* dst, const RowLayout& L) {
  struct alignas(1) Elem {
    char b[E];
  };
  const int64_t nd = static_cast<int64_t>(L.sizes.size());
  const int64_t inner = L.sizes[nd - 1], inner_stride = L.strides[nd - 1] * E;
  int64_t outer = 1;
  for (int64_t d = 0; d + 1 < nd; ++d) outer *= L.sizes[d];
  std::vector<int64_t> counter(std::max<int64_t>(nd - 1, 0), 0);
  const char* s = src;
  Elem* o = reinterpret_cast<Elem*>(dst);
  for (int64_t k = 0; k < outer; ++k) {
    for (int64_t j = 0; j < inner; ++j) {
      std::memcpy(o++, s + j * inner_stride, E);
    }
    // advance the outer counter (odometer), updating the source offset
    for (int64_t d = nd - 2; d >= 0; --d) {
      s += L.strides[d] * E;
      if (++counter[d] < L.sizes[d]) break;
      s -= L.strides[d] * E * L.sizes[d];
      counter[d] = 0;
    }
  }
}

// memcpy with non-temporal (streaming) stores: for outputs much larger than the caches it
// saves the read-for-ownership of every destination line. Callers issue the store fence.
void copy_streaming(char* dst, const char* src, int64_t bytes) {
#if defined(__SSE2__)
  int64_t i = 0;
  const int64_t head = (16 - static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) & 15)) & 15;
  if (head > 0) {
    std::memcpy(dst, src, std::min(head, bytes));
    i = std::min(head, bytes);
  }
  for (; i + 64 <= bytes; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  std::memcpy(dst + i, src + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

void copy_row(const char* src, char* dst, const RowLayout& L, int64_t elem, int64_t row_bytes,
              bool streaming) {
  if (L.contiguous()) {
    if (streaming && row_bytes >= 1024) {
      copy_streaming(dst, src, row_bytes);
    } else {
      std::memcpy(dst, src, row_bytes);
    }
    return;
  }
  switch (elem) {
    case 1: return copy_strided_row<1>(src, dst, L);
    case 2: return copy_strided_row<2>(src, dst, L);
    case 4: return copy_strided_row<4>(src, dst, L);
    case 8: return copy_strided_row<8>(src, dst, L);
    case 16: return copy_strided_row<16>(src, dst, L);
    default: TORCH_CHECK(false, "gather_rows: unsupported element size ", elem);
  }
}

std::vector<at::Tensor> gather_rows_cpu(at::TensorList tensors, const at::Tensor& index,
                                        int64_t n) {
  std::vector<at::Tensor> outs = prepare_gather_rows(tensors, index, n);
  const at::Tensor idx = index.slice(0, 0, n).contiguous();
  const int64_t* rows = idx.const_data_ptr<int64_t>();
  const int64_t N = tensors.empty() ? 0 : tensors[0].size(0);
  for (int64_t i = 0; i < (tensors.empty() ? 0 : n); ++i) {
    TORCH_CHECK_INDEX(rows[i] >= 0 && rows[i] < N, "gather_rows: index values must lie in "
                      "[0, N) with N = ", N, " rows, got index[", i, "] = ", rows[i]);
  }
  const int64_t T = static_cast<int64_t>(tensors.size());
  std::vector<RowLayout> layouts;
  std::vector<const char*> srcs;
  std::vector<char*> dsts;
  std::vector<int64_t> elems, row_bytes, src_row_stride;
  int64_t total_row_bytes = 0;
  for (int64_t t = 0; t < T; ++t) {
    const at::Tensor& src = tensors[t];
    layouts.push_back(row_layout(src));
    const int64_t elem = static_cast<int64_t>(src.element_size());
    elems.push_back(elem);
    row_bytes.push_back(c10::multiply_integers(src.sizes().slice(1)) * elem);
    srcs.push_back(static_cast<const char*>(src.const_data_ptr()));
    dsts.push_back(static_cast<char*>(outs[t].data_ptr()));
    src_row_stride.push_back(src.stride(0) * elem);
    total_row_bytes += row_bytes.back();
  }
  if (n == 0 || total_row_bytes == 0) return outs;
  // Outputs well beyond the last-level cache are written with streaming stores.
  const bool streaming = n * total_row_bytes >= kStreamingBytes;
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / total_row_bytes);
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t t = 0; t < T; ++t) {
        if (row_bytes[t] == 0) continue;
        copy_row(srcs[t] + rows[r] * src_row_stride[t], dsts[t] + r * row_bytes[t], layouts[t],
                 elems[t], row_bytes[t], streaming);
      }
    }
    if (streaming) store_fence();
  });
  return outs;
}

}  // namespace
}  // namespace gfkernels
