// Paged decode attention on the CPU, reading K/V in place from the block-major pool.
//
// One query token per sequence (decode). Per sequence, one pass over K computes the score of
// every query head (GQA: a query head reads the K of its group's KV head), one pass over V
// accumulates the softmax-weighted sums. K and V are each read once, straight from their
// blocks: no gathered copy. fp32 only (the CPU compute dtype). Threads: torch's intra-op pool.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline void axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace

// query [B, H, D] fp32 contiguous; cache [N, 2, bs, Hkv, D] fp32 with D dense;
// block_tables [B, M] int32; lens [B] int32. Returns [B, H, D] fp32.
torch::Tensor paged_decode(torch::Tensor query, torch::Tensor cache, torch::Tensor block_tables,
                           torch::Tensor lens, double scale) {
  TORCH_CHECK(query.dtype() == torch::kFloat32 && cache.dtype() == torch::kFloat32, "fp32 only");
  TORCH_CHECK(query.is_contiguous() && cache.stride(4) == 1, "query contiguous, head_dim dense");
  TORCH_CHECK(block_tables.dtype() == torch::kInt32 && lens.dtype() == torch::kInt32, "int32 tables");
  auto tables = block_tables.contiguous();
  auto lengths = lens.contiguous();
  const int64_t num_seqs = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const int64_t block_size = cache.size(2), num_kv_heads = cache.size(3);
  const int64_t group = num_heads / num_kv_heads, max_blocks = tables.size(1);
  const int64_t s_block = cache.stride(0), s_kv = cache.stride(1), s_tok = cache.stride(2),
                s_head = cache.stride(3);
  auto out = torch::empty_like(query);
  const float* q = query.data_ptr<float>();
  const float* base = cache.data_ptr<float>();
  const int32_t* table = tables.data_ptr<int32_t>();
  const int32_t* len = lengths.data_ptr<int32_t>();
  float* o = out.data_ptr<float>();
  const float fscale = static_cast<float>(scale);

  // One work item per sequence: a token's K (or V) row of every KV head is one dense span, so
  // both passes stream each block front to back.
  at::parallel_for(0, num_seqs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t seq = begin; seq < end; ++seq) {
      const int64_t n = len[seq];
      if (n <= 0) continue;
      const int32_t* row = table + seq * max_blocks;
      const float* qs = q + seq * num_heads * head_dim;
      float* os = o + seq * num_heads * head_dim;
      scores.resize(static_cast<size_t>(n * num_heads));
      // Pass 1: scores[t * H + h] = q_h . k_t(kv head of h) * scale.
      for (int64_t t = 0; t < n; ++t) {
        const float* k = base + row[t / block_size] * s_block + (t % block_size) * s_tok;
        float* st = scores.data() + t * num_heads;
        for (int64_t h = 0; h < num_heads; ++h)
          st[h] = dot(qs + h * head_dim, k + (h / group) * s_head, head_dim) * fscale;
      }
      // Softmax per query head (n >= 1: no infinities, which -ffast-math may not honour).
      for (int64_t h = 0; h < num_heads; ++h) {
        float peak = scores[h];
        for (int64_t t = 1; t < n; ++t) peak = std::max(peak, scores[t * num_heads + h]);
        float total = 0.f;
        for (int64_t t = 0; t < n; ++t) {
          const float p = std::exp(scores[t * num_heads + h] - peak);
          scores[t * num_heads + h] = p;
          total += p;
        }
        const float inv = 1.f / total;
        for (int64_t t = 0; t < n; ++t) scores[t * num_heads + h] *= inv;
      }
      std::fill(os, os + num_heads * head_dim, 0.f);
      // Pass 2: out_h = sum_t p_t,h * v_t(kv head of h).
      for (int64_t t = 0; t < n; ++t) {
        const float* v = base + row[t / block_size] * s_block + s_kv + (t % block_size) * s_tok;
        const float* pt = scores.data() + t * num_heads;
        for (int64_t h = 0; h < num_heads; ++h)
          axpy(pt[h], v + (h / group) * s_head, os + h * head_dim, head_dim);
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode", &paged_decode, "paged decode attention, fp32, K/V read in place");
}
