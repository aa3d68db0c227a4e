// Paged prefill attention on the CPU: one sequence's chunk of q_len queries (the last q_len
// positions of its context) attends causally to its whole context, read from the block-major
// pool.
//
// Work item: one KV head and one block of up to kQueryRows queries, with the group of query
// heads sharing that KV head stacked as rows (GQA: the group's rows share one K and V). Per
// item: the K and V rows up to the block's last position are gathered (widened to fp32) into
// dense [keys, D] buffers, S = Q K^T is one GEMM, each row's causal softmax runs in place,
// O = P V is a second GEMM. The GEMMs are the BLAS sgemm in torch (MKL's), one thread each: the
// items are spread over torch's intra-op pool. Keys past a block's last query are never
// multiplied, so a long chunk skips about half of the square. All math is fp32: the result
// equals the fp32 SDPA of the same queries to float rounding.
// Measured against torch's SDPA on the same chunk (2-vCPU AVX-512 Xeon, 2 threads, 12 heads / 4
// KV heads, D 64, bf16 K/V, both including the read of the pool; q_len @ context): 128 @ 128 0.33
// vs 0.80 ms, 300 @ 300 1.18 vs 2.73, 512 @ 512 2.7 vs 6.3, 256 @ 1024 4.8 vs 7.3, 512 @ 1536
// 13.2 vs 19.9, 2048 @ 8192 406 vs 577; kernels/twin.py calls this kernel for contexts up to
// MAX_NATIVE_PREFILL_CONTEXT.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "attention_checks.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#ifdef __AVX512F__
#include "paged_decode_avx512.h"   // exp_nonpositive, tail_mask
#endif

// The BLAS sgemm (Fortran interface, column-major) and MKL's per-thread thread count, from
// libtorch_cpu where torch links MKL (weak: a torch without them still loads this module, and the
// GEMMs go through ATen).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int num_threads) __attribute__((weak));   // mkl_service.h's C name
}

namespace {

// C [m, n] = A [m, k] @ (B [n, k] transposed when is_b_transposed, else B [k, n]), all dense
// row-major fp32, on the calling thread. Row-major C is column-major C^T = op(B)^T A^T.
void gemm(bool is_b_transposed, int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  if (sgemm_ != nullptr) {
    const int M = int(m), N = int(n), K = int(k), ldb = is_b_transposed ? K : N;
    const float one = 1.f, zero = 0.f;
    sgemm_(is_b_transposed ? "T" : "N", "N", &N, &M, &K, &one, b, &ldb, a, &K, &zero, c, &N);
    return;
  }
  const auto options = torch::TensorOptions().dtype(torch::kFloat32);
  auto A = torch::from_blob(const_cast<float*>(a), {m, k}, options);
  auto B = is_b_transposed ? torch::from_blob(const_cast<float*>(b), {n, k}, options).t()
                           : torch::from_blob(const_cast<float*>(b), {k, n}, options);
  auto C = torch::from_blob(c, {m, n}, options);
  at::mm_out(C, A, B);
}

inline void grow(std::vector<float>& buffer, int64_t size) {   // resize fills what it adds: only grow
  if (int64_t(buffer.size()) < size) buffer.resize(size);
}

// Query positions per item (x the group's heads: 96 rows at 12/4 heads). 16, 32 and 64 measured:
// 32 best by a few percent at 128-1500 tokens.
constexpr int64_t kQueryRows = 32;

template <typename T>
void gather_rows(const T* base, const int32_t* table, int64_t num_keys, int64_t block_size,
                 int64_t s_block, int64_t s_tok, int64_t head_dim, float* __restrict dst) {
  for (int64_t t = 0; t < num_keys; ++t) {
    const T* row = base + table[t / block_size] * s_block + (t % block_size) * s_tok;
    float* out = dst + t * head_dim;
#pragma omp simd
    for (int64_t i = 0; i < head_dim; ++i) out[i] = static_cast<float>(row[i]);
  }
}

// In place over row[0, n): exp(x - max) / sum; entries from `valid` on are masked to 0.
inline void causal_softmax(float* __restrict row, int64_t valid, int64_t n) {
#ifdef __AVX512F__
  namespace avx = paged_decode_avx512;
  __m512 peak = _mm512_set1_ps(-3.0e38f);   // not -inf: -ffast-math assumes finite values
  for (int64_t i = 0; i < valid; i += 16)
    peak = _mm512_max_ps(peak, _mm512_mask_loadu_ps(peak, avx::tail_mask(valid - i), row + i));
  const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(peak));
  __m512 sums = _mm512_setzero_ps();
  for (int64_t i = 0; i < valid; i += 16) {
    const __mmask16 mask = avx::tail_mask(valid - i);
    const __m512 e = avx::exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, row + i), top));
    _mm512_mask_storeu_ps(row + i, mask, e);
    sums = _mm512_mask_add_ps(sums, mask, sums, e);
  }
  const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sums));
  for (int64_t i = 0; i < valid; i += 16) {
    const __mmask16 mask = avx::tail_mask(valid - i);
    _mm512_mask_storeu_ps(row + i, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + i), inv));
  }
#else
  float peak = -3.0e38f;
  for (int64_t i = 0; i < valid; ++i) peak = std::max(peak, row[i]);
  float total = 0.f;
  for (int64_t i = 0; i < valid; ++i) {
    row[i] = std::exp(row[i] - peak);
    total += row[i];
  }
  const float inv = 1.f / total;
  for (int64_t i = 0; i < valid; ++i) row[i] *= inv;
#endif
  for (int64_t i = valid; i < n; ++i) row[i] = 0.f;
}

template <typename T, typename Q>
void prefill(const T* cache, const int64_t* strides, int64_t block_size, int64_t num_kv_heads,
             const Q* query, const int64_t* q_strides, int64_t num_queries, int64_t num_heads,
             int64_t head_dim, const int32_t* table, int64_t context_len, float scale, float* out) {
  const int64_t group = num_heads / num_kv_heads;
  const int64_t num_blocks = (num_queries + kQueryRows - 1) / kQueryRows;
  const int64_t first_pos = context_len - num_queries;   // position of query 0
  // Items: KV heads x query blocks, the blocks in the order last, first, second last, second,
  // ...: the pool splits the items into contiguous ranges, and each range then holds long and
  // short blocks alike (a block's keys grow with its position).
  at::parallel_for(0, num_kv_heads * num_blocks, 1, [&](int64_t begin, int64_t end) {
    // One MKL thread inside an item: the items already occupy the pool (MKL's own team nested
    // in it only waited at its barriers).
    const int previous_mkl_threads = MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0;
    std::vector<float> keys, values, q, scores, o;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t kv = item % num_kv_heads, rank = item / num_kv_heads;
      const int64_t block = rank % 2 == 0 ? num_blocks - 1 - rank / 2 : rank / 2;
      const int64_t q0 = block * kQueryRows, rows = std::min(kQueryRows, num_queries - q0);
      const int64_t num_keys = first_pos + q0 + rows;   // up to the block's last position
      const int64_t m = group * rows;
      grow(keys, num_keys * head_dim);
      grow(values, num_keys * head_dim);
      grow(q, m * head_dim);
      grow(scores, m * num_keys);
      grow(o, m * head_dim);
      const T* k_base = cache + kv * strides[3];
      gather_rows(k_base, table, num_keys, block_size, strides[0], strides[2], head_dim, keys.data());
      gather_rows(k_base + strides[1], table, num_keys, block_size, strides[0], strides[2], head_dim,
                  values.data());
      for (int64_t g = 0; g < group; ++g)   // row g * rows + i: head kv * group + g, query q0 + i
        for (int64_t i = 0; i < rows; ++i) {
          const Q* src = query + (q0 + i) * q_strides[0] + (kv * group + g) * q_strides[1];
          float* dst = q.data() + (g * rows + i) * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) dst[d] = static_cast<float>(src[d]) * scale;
        }
      gemm(true, m, num_keys, head_dim, q.data(), keys.data(), scores.data());
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < rows; ++i)
          causal_softmax(scores.data() + (g * rows + i) * num_keys, first_pos + q0 + i + 1, num_keys);
      gemm(false, m, head_dim, num_keys, scores.data(), values.data(), o.data());
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < rows; ++i)
          std::copy_n(o.data() + (g * rows + i) * head_dim, head_dim,
                      out + ((q0 + i) * num_heads + kv * group + g) * head_dim);
    }
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_mkl_threads);
  });
}

template <typename T>
void prefill_query(const torch::Tensor& cache, const torch::Tensor& query, const int32_t* table,
                   int64_t context_len, float scale, float* out) {
  const int64_t strides[4] = {cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3)};
  const int64_t q_strides[2] = {query.stride(0), query.stride(1)};
  const int64_t block_size = cache.size(2), num_kv_heads = cache.size(3);
  const int64_t num_queries = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const T* base = static_cast<const T*>(cache.data_ptr());
  if (query.scalar_type() == torch::kFloat32)
    prefill(base, strides, block_size, num_kv_heads, query.data_ptr<float>(), q_strides, num_queries,
            num_heads, head_dim, table, context_len, scale, out);
  else if (query.scalar_type() == torch::kBFloat16)
    prefill(base, strides, block_size, num_kv_heads, query.data_ptr<at::BFloat16>(), q_strides,
            num_queries, num_heads, head_dim, table, context_len, scale, out);
  else
    prefill(base, strides, block_size, num_kv_heads, query.data_ptr<at::Half>(), q_strides, num_queries,
            num_heads, head_dim, table, context_len, scale, out);
}

}  // namespace

// query [L, H, D] fp32, bf16 or fp16 (any row strides, D dense): the last L positions of a
// context of context_len tokens; cache [N, 2, bs, Hkv, D] fp32, fp16 or bf16 with D dense;
// block_table [>= ceil(context_len / bs)] int32. Returns [L, H, D] fp32.
torch::Tensor paged_prefill(torch::Tensor query, torch::Tensor cache, torch::Tensor block_table,
                            int64_t context_len, double scale) {
  const auto kind = cache.scalar_type();
  check_query_and_cache(query, cache);
  TORCH_CHECK(query.size(1) % cache.size(3) == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(query.size(2) == cache.size(4), "query and cache head_dim differ");
  TORCH_CHECK(context_len >= query.size(0), "more queries than context");
  TORCH_CHECK(block_table.dtype() == torch::kInt32 && block_table.dim() == 1 &&
                  block_table.size(0) * cache.size(2) >= context_len,
              "block_table: int32 with a block for every context position");
  auto table = block_table.contiguous();
  auto out = torch::empty(query.sizes(), query.options().dtype(torch::kFloat32));
  if (query.size(0) == 0) return out;
  const float s = static_cast<float>(scale);
  if (kind == torch::kFloat32)
    prefill_query<float>(cache, query, table.data_ptr<int32_t>(), context_len, s, out.data_ptr<float>());
  else if (kind == torch::kBFloat16)
    prefill_query<at::BFloat16>(cache, query, table.data_ptr<int32_t>(), context_len, s, out.data_ptr<float>());
  else
    prefill_query<at::Half>(cache, query, table.data_ptr<int32_t>(), context_len, s, out.data_ptr<float>());
  return out;
}
