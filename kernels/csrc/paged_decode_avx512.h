// Paged decode attention, AVX-512 body (paged_decode_cpu.cpp dispatches to it when it was
// compiled for AVX-512 and head_dim is a multiple of 16 up to 128).
//
// Work item: one sequence and one KV head, that is the group of query heads sharing it. Each
// item makes two passes over its rows of K and V (head_dim contiguous elements per token), so
// the group's running sums stay in registers across the whole context:
// - scores: 16 tokens at a time, each token's K row loaded (widened to fp32) once and
//   multiplied by every query head of the group; the 16 per-token vectors of partial products
//   of a head are summed lane-wise by one transpose-and-add tree (reduce16), not 16
//   horizontal sums;
// - softmax per head over its contiguous scores with a polynomial exp (Cephes' expf, ~1 ulp);
// - values: per token, the V row loaded once and accumulated into every head's output, held in
//   registers (up to 4 heads at once at head_dim 64, 2 at 128).
// The row one block ahead is prefetched (the next block is anywhere in the pool). Measured on
// the 2-vCPU AVX512-BF16 EPYC (2 threads, 12 heads / 4 KV heads, D 64, 12 layers of a strided
// pool, best of 3), against the portable body: bf16 K/V B 64 x 300 32.9 -> 22.5 ms, 16 x 1000
// 27.0 -> 16.8, 128 x 500 109.8 -> 77.0; fp32 K/V 64 x 300 40.1 -> 28.8, 128 x 500 123.6 ->
// 86.0 (fp32 then reads 16-18 GB/s, about what a gather of the same blocks reads on this VM).
#pragma once

#include <immintrin.h>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace paged_decode_avx512 {

template <typename T>
inline __m512 load16(const T* p);

template <>
inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }

template <>
inline __m512 load16<at::BFloat16>(const at::BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));   // bf16: top half of fp32
}

template <>
inline __m512 load16<at::Half>(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Lane t of the result is the sum of the 16 lanes of v[t].
inline __m512 reduce16(const __m512* v) {
  __m512 w[8], x[4];
  for (int k = 0; k < 8; ++k)   // per 128-bit chunk: [a0+a2, b0+b2, a1+a3, b1+b3]
    w[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  for (int k = 0; k < 4; ++k) {  // per chunk: the chunk's sum of v[4k], v[4k+1], v[4k+2], v[4k+3]
    const __m512d a = _mm512_castps_pd(w[2 * k]), b = _mm512_castps_pd(w[2 * k + 1]);
    x[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  constexpr int kEven = _MM_SHUFFLE(2, 0, 2, 0), kOdd = _MM_SHUFFLE(3, 1, 3, 1);
  const __m512 z0 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], kEven), _mm512_shuffle_f32x4(x[0], x[1], kOdd));
  const __m512 z1 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], kEven), _mm512_shuffle_f32x4(x[2], x[3], kOdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, kEven), _mm512_shuffle_f32x4(z0, z1, kOdd));
}

// exp(x) for x <= 0 (Cephes' expf: range reduction by ln 2, degree-6 polynomial, ~1 ulp).
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 tail_mask(int64_t count) {   // the first min(count, 16) lanes
  return count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
}

template <typename T>
struct Rows {
  const T* base;          // the layer's K of block 0
  int64_t block_size, s_block, s_kv, s_tok, s_head;

  const T* row(const int32_t* table, int64_t t, int64_t kv, int64_t head) const {
    return base + table[t / block_size] * s_block + kv * s_kv + (t % block_size) * s_tok + head * s_head;
  }
};

template <typename T, int kChunks>
inline void prefetch_row(const T* row) {
  constexpr int kBytes = kChunks * 16 * int(sizeof(T));
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int offset = 0; offset < kBytes; offset += 64) __builtin_prefetch(bytes + offset);
}

// scores[j * stride + t] = q_j . k_t for the kGroup heads j of q (each kChunks * 16 floats).
template <typename T, int kChunks, int kGroup>
void score_heads(const Rows<T>& R, const int32_t* table, int64_t n, int64_t kv_head, const float* q,
                 float* scores, int64_t stride) {
  constexpr int64_t D = kChunks * 16;
  alignas(64) __m512 partial[kGroup][16];
  for (int64_t t0 = 0; t0 < n; t0 += 16) {
    const int64_t m = std::min<int64_t>(16, n - t0);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = t0 + i;
      if (t + R.block_size < n) prefetch_row<T, kChunks>(R.row(table, t + R.block_size, 0, kv_head));
      const T* k = R.row(table, t, 0, kv_head);
      __m512 kr[kChunks];
      for (int c = 0; c < kChunks; ++c) kr[c] = load16(k + 16 * c);
      for (int j = 0; j < kGroup; ++j) {
        __m512 a = _mm512_mul_ps(_mm512_loadu_ps(q + j * D), kr[0]);
        for (int c = 1; c < kChunks; ++c) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + j * D + 16 * c), kr[c], a);
        partial[j][i] = a;
      }
    }
    for (int j = 0; j < kGroup; ++j) {
      for (int64_t i = m; i < 16; ++i) partial[j][i] = _mm512_setzero_ps();
      _mm512_mask_storeu_ps(scores + j * stride + t0, tail_mask(m), reduce16(partial[j]));
    }
  }
}

// In place: scores[0, n) -> exp(s - max); returns their sum.
inline float softmax_numerators(float* scores, int64_t n) {
  __m512 peak = _mm512_set1_ps(-3.0e38f);
  for (int64_t t = 0; t < n; t += 16)
    peak = _mm512_max_ps(peak, _mm512_mask_loadu_ps(peak, tail_mask(n - t), scores + t));
  const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(peak));
  __m512 total = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; t += 16) {
    const __mmask16 mask = tail_mask(n - t);
    const __m512 p = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, scores + t), top));
    _mm512_mask_storeu_ps(scores + t, mask, p);
    total = _mm512_mask_add_ps(total, mask, total, p);
  }
  return _mm512_reduce_add_ps(total);
}

// out_j = sum_t p[j * stride + t] * v_t / totals[j] for the kGroup heads j.
template <typename T, int kChunks, int kGroup>
void weigh_values(const Rows<T>& R, const int32_t* table, int64_t n, int64_t kv_head, const float* p,
                  int64_t stride, const float* totals, float* out) {
  constexpr int64_t D = kChunks * 16;
  __m512 acc[kGroup][kChunks];
  for (int j = 0; j < kGroup; ++j)
    for (int c = 0; c < kChunks; ++c) acc[j][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    if (t + R.block_size < n) prefetch_row<T, kChunks>(R.row(table, t + R.block_size, 1, kv_head));
    const T* v = R.row(table, t, 1, kv_head);
    __m512 vr[kChunks];
    for (int c = 0; c < kChunks; ++c) vr[c] = load16(v + 16 * c);
    for (int j = 0; j < kGroup; ++j) {
      const __m512 weight = _mm512_set1_ps(p[j * stride + t]);
      for (int c = 0; c < kChunks; ++c) acc[j][c] = _mm512_fmadd_ps(weight, vr[c], acc[j][c]);
    }
  }
  for (int j = 0; j < kGroup; ++j) {
    const __m512 inv = _mm512_set1_ps(1.f / totals[j]);
    for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(out + j * D + 16 * c, _mm512_mul_ps(acc[j][c], inv));
  }
}

// Heads at most this many at once: their output sums (kChunks registers each) stay in registers.
template <int kChunks>
constexpr int kMaxGroup = kChunks <= 4 ? 4 : (kChunks <= 5 ? 3 : 2);

template <typename T, int kChunks, int kGroup>
void attend_heads(const Rows<T>& R, const int32_t* table, int64_t n, int64_t kv_head, const float* q,
                  float* out, float* scores, int64_t stride, float* totals) {
  score_heads<T, kChunks, kGroup>(R, table, n, kv_head, q, scores, stride);
  for (int j = 0; j < kGroup; ++j) totals[j] = softmax_numerators(scores + j * stride, n);
  weigh_values<T, kChunks, kGroup>(R, table, n, kv_head, scores, stride, totals, out);
}

// `count` (1..kMaxGroup) heads sharing kv_head.
template <typename T, int kChunks>
void attend_some(const Rows<T>& R, const int32_t* table, int64_t n, int64_t kv_head, const float* q,
                 float* out, float* scores, int64_t stride, float* totals, int count) {
  switch (count) {
    case 1: return attend_heads<T, kChunks, 1>(R, table, n, kv_head, q, out, scores, stride, totals);
    case 2: return attend_heads<T, kChunks, 2>(R, table, n, kv_head, q, out, scores, stride, totals);
    case 3:
      if constexpr (kMaxGroup<kChunks> >= 3)
        return attend_heads<T, kChunks, 3>(R, table, n, kv_head, q, out, scores, stride, totals);
      break;
    case 4:
      if constexpr (kMaxGroup<kChunks> >= 4)
        return attend_heads<T, kChunks, 4>(R, table, n, kv_head, q, out, scores, stride, totals);
      break;
  }
}

// q [B, H, D] scaled fp32, out [B, H, D]; cache [N, 2, bs, Hkv, D] with D = kChunks * 16.
template <typename T, int kChunks>
void attend_all(const T* base, const int64_t* cache_strides, int64_t block_size, int64_t num_kv_heads,
                const float* q, const int32_t* tables, const int32_t* lens, float* o, int64_t num_seqs,
                int64_t num_heads, int64_t max_blocks) {
  constexpr int64_t D = kChunks * 16;
  const Rows<T> rows{base, block_size, cache_strides[0], cache_strides[1], cache_strides[2], cache_strides[3]};
  const int64_t group = num_heads / num_kv_heads;
  // Items are (sequence, KV head), a sequence's heads side by side: a thread takes whole
  // sequences where there are enough of them, and splits one long sequence's heads otherwise.
  at::parallel_for(0, num_seqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    float totals[4];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / num_kv_heads, kv_head = item % num_kv_heads, n = lens[seq];
      if (n <= 0) continue;
      const int64_t stride = (n + 15) / 16 * 16;
      scores.resize(static_cast<size_t>(kMaxGroup<kChunks> * stride));
      const int32_t* table = tables + seq * max_blocks;
      for (int64_t j0 = 0; j0 < group; j0 += kMaxGroup<kChunks>) {
        const int count = int(std::min<int64_t>(kMaxGroup<kChunks>, group - j0));
        const int64_t head = kv_head * group + j0;
        attend_some<T, kChunks>(rows, table, n, kv_head, q + (seq * num_heads + head) * D,
                                o + (seq * num_heads + head) * D, scores.data(), stride, totals, count);
      }
    }
  });
}

// Whether this body serves head_dim (the caller keeps its portable body otherwise).
inline bool handles(int64_t head_dim) {
  return head_dim % 16 == 0 && head_dim >= 16 && head_dim <= 128;
}

template <typename T>
void attend(const T* base, const int64_t* cache_strides, int64_t block_size, int64_t num_kv_heads,
            const float* q, const int32_t* tables, const int32_t* lens, float* o, int64_t num_seqs,
            int64_t num_heads, int64_t head_dim, int64_t max_blocks) {
#define STRATA_ATTEND(CHUNKS)                                                                     \
  case CHUNKS:                                                                                   \
    return attend_all<T, CHUNKS>(base, cache_strides, block_size, num_kv_heads, q, tables, lens, \
                                 o, num_seqs, num_heads, max_blocks)
  switch (head_dim / 16) {
    STRATA_ATTEND(1); STRATA_ATTEND(2); STRATA_ATTEND(3); STRATA_ATTEND(4);
    STRATA_ATTEND(5); STRATA_ATTEND(6); STRATA_ATTEND(7); STRATA_ATTEND(8);
  }
#undef STRATA_ATTEND
}

}  // namespace paged_decode_avx512
