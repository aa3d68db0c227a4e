// Paged decode attention on the CPU, reading K/V in place from the block-major pool.
//
// One query token per sequence (decode). Per sequence, one pass over K computes the score of
// every query head (GQA: a query head reads the K of its group's KV head), a softmax over the
// scores, one pass over V accumulates the weighted sums. K and V are each read once, straight
// from their blocks: no gathered copy. The query and the math are fp32 (the CPU compute dtype);
// the cache may hold fp32, fp16 or bf16 (--kv-cache-dtype): a 16-bit row is widened to fp32 in
// a small per-thread buffer as it is read, which halves the bytes this memory-bound kernel
// streams. Threads: torch's intra-op pool splits the sequences; each thread walks its own.
//
// The kernel is bound by memory reads (a sequence's K/V is far larger than its compute), so:
// - each pass prefetches the row one block ahead (a block's rows are contiguous; the next block
//   is anywhere in the pool, out of the hardware prefetcher's sight);
// - head_dim 64 and 128 are compiled with a fixed trip count (fully unrolled dot products);
// - scores are laid out token-major [t][head], so the max, exp and sum run across heads in SIMD.
// - a thread walks two sequences in lockstep (row t of one, then of the other): two streams of
//   reads keep more cache-line fetches in flight than one.
// Measured (1 thread, 12 heads / 4 KV heads, D 64, K/V cold in memory, B 64 x ~330 tokens):
// 5.4 ms per layer against 8.1 ms for one-head-at-a-time scalar softmax without prefetch.
// Walking two sequences instead of one (12 layers, alternating A/B in one process): fp32 K/V
// 268-294 vs 299-336 ns per token and layer at B 128 x 300, 232-282 vs 261-308 at B 128 x 500,
// 203-247 vs 234-265 at B 16 x 400; fp16 even (188-243 vs 191-230). Four: fp32 a little less
// gain, fp16 7% slower; eight: slower for both. Reading the same rows with no compute: one
// stream 10.2 GB/s, two 12.1, four 13.7.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "attention_checks.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __F16C__
#include <immintrin.h>
#endif
#ifdef __AVX512F__
#include "paged_decode_avx512.h"
#endif

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

template <typename T>
inline void prefetch_span(const T* start, int64_t num_elements) {
  const char* bytes = reinterpret_cast<const char*>(start);
  for (int64_t offset = 0; offset < num_elements * int64_t(sizeof(T)); offset += 64)
    __builtin_prefetch(bytes + offset);
}

// A cache row as fp32: fp32 rows are read in place, 16-bit rows widened into `buffer`.
inline const float* widen(const float* row, int64_t, float*) { return row; }

inline const float* widen(const at::BFloat16* row, int64_t n, float* __restrict buffer) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(row);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t word = uint32_t(bits[i]) << 16;   // bf16 is the top half of an fp32
    std::memcpy(buffer + i, &word, sizeof(float));
  }
  return buffer;
}

inline const float* widen(const at::Half* row, int64_t n, float* __restrict buffer) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(buffer + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i))));
#endif
  for (; i < n; ++i) buffer[i] = static_cast<float>(row[i]);
  return buffer;
}

template <typename T>
struct Layout {
  const T* base;          // the layer's K of block 0
  int64_t block_size, s_block, s_kv, s_tok, s_head;
  int64_t num_heads, group, head_dim;
  int64_t row_elements;   // one token's K (or V) row over every KV head

  const T* row(const int32_t* table, int64_t t, int64_t kv) const {
    return base + table[t / block_size] * s_block + kv * s_kv + (t % block_size) * s_tok;
  }
};

// One sequence's part of a call: q [H, D] (already scaled), out [H, D], scores room for n * H
// floats (token-major: scores[t * H + h]), total for H.
struct Sequence {
  const int32_t* table;
  int64_t n;
  const float* q;
  float* out;
  float* scores;
  float* total;
};

// Sequences walked in lockstep, row t of each in turn (see the measurements at the top).
constexpr int64_t kSequencesPerWalk = 2;

// Softmax per head, vectorised across heads (n >= 1: no infinities, which -ffast-math may not
// honour). peak: room for H.
inline void softmax_rows(const Sequence& s, int64_t H, float* __restrict peak) {
  std::copy(s.scores, s.scores + H, peak);
  for (int64_t t = 1; t < s.n; ++t) {
    const float* st = s.scores + t * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) peak[h] = std::max(peak[h], st[h]);
  }
  std::fill(s.total, s.total + H, 0.f);
  for (int64_t t = 0; t < s.n; ++t) {
    float* st = s.scores + t * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const float p = std::exp(st[h] - peak[h]);
      st[h] = p;
      s.total[h] += p;
    }
  }
}

// Row t of every sequence in turn, for t up to the longest: visit(s, t, row) with the row of
// K (kv 0) or V (kv 1) as fp32, the same row of the next block prefetched first. row: room for
// one widened row (unused when T is float).
template <typename T, typename Visit>
inline void walk_rows(const Layout<T>& L, const Sequence* seqs, int64_t count, int64_t kv,
                      float* __restrict row, Visit&& visit) {
  int64_t longest = 0;
  for (int64_t j = 0; j < count; ++j) longest = std::max(longest, seqs[j].n);
  for (int64_t t = 0; t < longest; ++t) {
    for (int64_t j = 0; j < count; ++j) {
      const Sequence& s = seqs[j];
      if (t >= s.n) continue;
      if (t + L.block_size < s.n) prefetch_span(L.row(s.table, t + L.block_size, kv), L.row_elements);
      visit(s, t, widen(L.row(s.table, t, kv), L.row_elements, row));
    }
  }
}

// Up to kSequencesPerWalk sequences of any lengths; peak for H floats, row for one widened row
// (unused when T is float).
template <typename T, int64_t kDim>
void attend_walk(const Layout<T>& L, const Sequence* seqs, int64_t count, float* __restrict peak,
                 float* __restrict row) {
  const int64_t H = L.num_heads, D = kDim > 0 ? kDim : L.head_dim;
  // Pass 1: scores[t * H + h] = q_h . k_t(kv head of h).
  walk_rows(L, seqs, count, 0, row, [&](const Sequence& s, int64_t t, const float* k) {
    float* st = s.scores + t * H;
    for (int64_t h = 0; h < H; ++h) st[h] = dot<kDim>(s.q + h * D, k + (h / L.group) * L.s_head, D);
  });
  for (int64_t j = 0; j < count; ++j) {
    softmax_rows(seqs[j], H, peak);
    std::fill(seqs[j].out, seqs[j].out + H * D, 0.f);
  }
  // Pass 2: out_h = sum_t p_t,h * v_t(kv head of h), then normalise.
  walk_rows(L, seqs, count, 1, row, [&](const Sequence& s, int64_t t, const float* v) {
    const float* pt = s.scores + t * H;
    for (int64_t h = 0; h < H; ++h) axpy<kDim>(pt[h], v + (h / L.group) * L.s_head, s.out + h * D, D);
  });
  for (int64_t j = 0; j < count; ++j) {
    for (int64_t h = 0; h < H; ++h) {
      const float inv = 1.f / seqs[j].total[h];
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) seqs[j].out[h * D + i] *= inv;
    }
  }
}

template <typename T>
void attend_all(const torch::Tensor& cache, const float* q, const int32_t* table, const int32_t* len,
                float* o, int64_t num_seqs, int64_t num_heads, int64_t head_dim, int64_t max_blocks) {
  const int64_t num_kv_heads = cache.size(3);
  const Layout<T> layout{cache.data_ptr<T>(), cache.size(2), cache.stride(0), cache.stride(1),
                         cache.stride(2), cache.stride(3), num_heads, num_heads / num_kv_heads,
                         head_dim, (num_kv_heads - 1) * cache.stride(3) + head_dim};
  at::parallel_for(0, num_seqs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores[kSequencesPerWalk], totals(kSequencesPerWalk * num_heads), peak(num_heads),
        row(layout.row_elements);
    Sequence walk[kSequencesPerWalk];
    int64_t seq = begin;
    while (seq < end) {
      int64_t count = 0;
      for (; seq < end && count < kSequencesPerWalk; ++seq) {
        const int64_t n = len[seq];
        if (n <= 0) continue;
        scores[count].resize(static_cast<size_t>(n * num_heads));
        walk[count] = Sequence{table + seq * max_blocks, n, q + seq * num_heads * head_dim,
                               o + seq * num_heads * head_dim, scores[count].data(),
                               totals.data() + count * num_heads};
        ++count;
      }
      if (head_dim == 64)
        attend_walk<T, 64>(layout, walk, count, peak.data(), row.data());
      else if (head_dim == 128)
        attend_walk<T, 128>(layout, walk, count, peak.data(), row.data());
      else
        attend_walk<T, 0>(layout, walk, count, peak.data(), row.data());
    }
  });
}

// dst [B, H, D] dense fp32 = query [B, H, D] (any strides but a dense last dim) * scale.
template <typename T>
void scale_rows(const T* src, const torch::Tensor& query, float scale, float* __restrict dst) {
  const int64_t B = query.size(0), H = query.size(1), D = query.size(2);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const T* row = src + b * query.stride(0) + h * query.stride(1);
      float* out = dst + (b * H + h) * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) out[i] = static_cast<float>(row[i]) * scale;
    }
}

}  // namespace

// query [B, H, D] fp32, bf16 or fp16; cache [N, 2, bs, Hkv, D] fp32, fp16 or bf16 with D dense;
// block_tables [B, M] int32; lens [B] int32. Returns [B, H, D] fp32.
torch::Tensor paged_decode(torch::Tensor query, torch::Tensor cache, torch::Tensor block_tables,
                           torch::Tensor lens, double scale) {
  const auto kind = cache.scalar_type(), query_kind = query.scalar_type();
  check_query_and_cache(query, cache);
  TORCH_CHECK(block_tables.dtype() == torch::kInt32 && lens.dtype() == torch::kInt32, "int32 tables");
  auto tables = block_tables.contiguous();
  auto lengths = lens.contiguous();
  // The scaled fp32 queries, read through the query's strides (a view of the fused qkv) in one
  // pass on this thread: no torch ops, whose thread wake-ups cost more than this at decode sizes.
  auto scaled = torch::empty(query.sizes(), query.options().dtype(torch::kFloat32));
  if (query_kind == torch::kFloat32)
    scale_rows(query.data_ptr<float>(), query, float(scale), scaled.data_ptr<float>());
  else if (query_kind == torch::kBFloat16)
    scale_rows(query.data_ptr<at::BFloat16>(), query, float(scale), scaled.data_ptr<float>());
  else
    scale_rows(query.data_ptr<at::Half>(), query, float(scale), scaled.data_ptr<float>());
  auto out = torch::empty_like(scaled);
  const int64_t num_seqs = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const float* q = scaled.data_ptr<float>();
  const int32_t* table = tables.data_ptr<int32_t>();
  const int32_t* len = lengths.data_ptr<int32_t>();
  float* o = out.data_ptr<float>();
#ifdef __AVX512F__
  if (paged_decode_avx512::handles(head_dim)) {
    namespace avx = paged_decode_avx512;
    const int64_t strides[4] = {cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3)};
    const int64_t block_size = cache.size(2), num_kv_heads = cache.size(3), max_blocks = tables.size(1);
    if (kind == torch::kFloat32)
      avx::attend(cache.data_ptr<float>(), strides, block_size, num_kv_heads, q, table, len, o, num_seqs,
                  num_heads, head_dim, max_blocks);
    else if (kind == torch::kFloat16)
      avx::attend(cache.data_ptr<at::Half>(), strides, block_size, num_kv_heads, q, table, len, o, num_seqs,
                  num_heads, head_dim, max_blocks);
    else
      avx::attend(cache.data_ptr<at::BFloat16>(), strides, block_size, num_kv_heads, q, table, len, o,
                  num_seqs, num_heads, head_dim, max_blocks);
    return out;
  }
#endif
  if (kind == torch::kFloat32)
    attend_all<float>(cache, q, table, len, o, num_seqs, num_heads, head_dim, tables.size(1));
  else if (kind == torch::kFloat16)
    attend_all<at::Half>(cache, q, table, len, o, num_seqs, num_heads, head_dim, tables.size(1));
  else
    attend_all<at::BFloat16>(cache, q, table, len, o, num_seqs, num_heads, head_dim, tables.size(1));
  return out;
}
