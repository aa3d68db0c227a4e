// y = x @ w.T for a few rows of x (decode steps of small batches), fp32, on the CPU.
//
// With few rows a linear layer is bound by reading its weight: a decode step of B requests
// streams every weight once whatever B is. MKL's sgemm at 2 <= M <= 32 does not stream it at
// memory speed (1 thread, the 124M Llama's 48 layer matrices + lm_head, weights cold: M=1 31
// ms, M=4 60 ms, M=8 80 ms, M=16 85 ms, M=32 98 ms; reading the 400 MB takes ~31 ms). This
// kernel reads each weight row once, in its torch layout [N, K] (no packed copy): a tile of
// kRowTile weight rows (a few KB, stays in L1) is multiplied with every x row, four x rows at a
// time, each dot product accumulated in AVX-512 registers and reduced once at its end.
// Threads: torch's intra-op pool, split over weight rows.
//
// Built everywhere; is_fast() says whether the AVX-512 body was compiled (without it the
// portable loop is correct but no faster than MKL, and the caller keeps F.linear).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kRowTile = 4;       // weight rows multiplied together (one L1-resident tile)
constexpr int64_t kXTile = 4;         // x rows per pass over the tile
constexpr int64_t kRowsPerTask = 64;  // weight rows per parallel_for task

#ifdef __AVX512F__
// out[m * out_stride + n] = x_m . w_n for NR weight rows and MR x rows, K any size.
template <int NR, int MR>
inline void dots(const float* const* w, const float* const* x, int64_t K, float* out, int64_t out_stride,
                 int64_t ahead) {
  __m512 acc[NR][MR];
  for (int n = 0; n < NR; ++n)
    for (int m = 0; m < MR; ++m) acc[n][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm512_loadu_ps(x[m] + k);
    for (int n = 0; n < NR; ++n) {
      if (ahead) _mm_prefetch(reinterpret_cast<const char*>(w[n] + k + ahead), _MM_HINT_T0);
      const __m512 wv = _mm512_loadu_ps(w[n] + k);
      for (int m = 0; m < MR; ++m) acc[n][m] = _mm512_fmadd_ps(wv, xv[m], acc[n][m]);
    }
  }
  if (k < K) {   // K not a multiple of 16: one masked chunk
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, x[m] + k);
    for (int n = 0; n < NR; ++n) {
      const __m512 wv = _mm512_maskz_loadu_ps(mask, w[n] + k);
      for (int m = 0; m < MR; ++m) acc[n][m] = _mm512_fmadd_ps(wv, xv[m], acc[n][m]);
    }
  }
  for (int n = 0; n < NR; ++n)
    for (int m = 0; m < MR; ++m) out[m * out_stride + n] = _mm512_reduce_add_ps(acc[n][m]);
}

template <int NR>
inline void tile(const float* const* w, const float* px, int64_t x_stride, int64_t M, int64_t K,
                 float* out, int64_t out_stride) {
  for (int64_t m0 = 0; m0 < M; m0 += kXTile) {
    const float* x[kXTile];
    const int64_t rows = std::min(kXTile, M - m0);
    for (int64_t m = 0; m < rows; ++m) x[m] = px + (m0 + m) * x_stride;
    float* o = out + m0 * out_stride;
    // The first pass over the tile streams it from memory: prefetch the next tile meanwhile.
    const int64_t ahead = m0 == 0 ? NR * K : 0;
    switch (rows) {
      case 4: dots<NR, 4>(w, x, K, o, out_stride, ahead); break;
      case 3: dots<NR, 3>(w, x, K, o, out_stride, ahead); break;
      case 2: dots<NR, 2>(w, x, K, o, out_stride, ahead); break;
      default: dots<NR, 1>(w, x, K, o, out_stride, ahead); break;
    }
  }
}
#endif

}  // namespace

bool small_linear_is_fast() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
}

// x [M, K] fp32 with dense rows, w [N, K] fp32 contiguous. Returns [M, N] = x @ w.T.
torch::Tensor small_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && w.dtype() == torch::kFloat32, "small_linear: fp32 only");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "small_linear: x must be [M, K] with dense rows");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1),
              "small_linear: w must be a contiguous [N, K] with x's K");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), x_stride = x.stride(0);
  auto out = torch::empty({M, N}, x.options());
  const float* px = x.data_ptr<float>();
  const float* pw = w.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, N, kRowsPerTask, [&](int64_t begin, int64_t end) {
#ifdef __AVX512F__
    int64_t n = begin;
    for (; n + kRowTile <= end; n += kRowTile) {
      const float* rows[kRowTile];
      for (int64_t r = 0; r < kRowTile; ++r) rows[r] = pw + (n + r) * K;
      tile<kRowTile>(rows, px, x_stride, M, K, po + n, N);
    }
    for (; n < end; ++n) {
      const float* row[1] = {pw + n * K};
      tile<1>(row, px, x_stride, M, K, po + n, N);
    }
#else
    for (int64_t n = begin; n < end; ++n)
      for (int64_t m = 0; m < M; ++m) {
        const float* a = px + m * x_stride;
        const float* b = pw + n * K;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < K; ++k) sum += a[k] * b[k];
        po[m * N + n] = sum;
      }
#endif
  });
  return out;
}
