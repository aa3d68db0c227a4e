// Fused elementwise layers for the CPU forward (fp32 or bf16): each reads and writes its tensor
// once, where torch's op-by-op forms make four to six passes (RMSNorm: pow, mean, add, rsqrt,
// mul, mul; SiLU-and-mul: silu, mul over a strided half; rotate-half RoPE: two slices, neg, cat,
// mul, mul, add). On a 4096-token prefill step of a 124M Llama these passes were 18% of the
// fp32 step. Same arithmetic as the torch forms (transformers' order of operations; in bf16 the
// math is fp32 and each result that torch would store in bf16 is rounded to bf16 at the same
// point), so results match them to float rounding. Threads: torch's intra-op pool, over rows.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kRowsPerTask = 16;

void check_rows(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 || x.dtype() == torch::kBFloat16, name, ": fp32 or bf16 only");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, name, ": want a [rows, width] tensor with dense rows");
}

// fp32 <-> storage type. bf16 is the top half of an fp32; rounding to nearest even, as torch.
inline float load(float x) { return x; }
inline float load(at::BFloat16 x) {
  const uint32_t word = uint32_t(x.x) << 16;
  float f;
  std::memcpy(&f, &word, sizeof(f));
  return f;
}
inline void store(float* out, float x) { *out = x; }
inline void store(at::BFloat16* out, float x) {
  uint32_t word;
  std::memcpy(&word, &x, sizeof(word));
  word += 0x7FFFu + ((word >> 16) & 1u);
  out->x = static_cast<uint16_t>(word >> 16);
}
// x as torch would hold it after an op that returns T (fp32: unchanged).
inline float round_to(float x, const float*) { return x; }
inline float round_to(float x, const at::BFloat16*) {
  at::BFloat16 stored;
  store(&stored, x);
  return load(stored);
}

template <typename T>
inline void norm_row(const T* __restrict x, const T* __restrict w, T* __restrict out, int64_t n, float eps) {
  float squares = 0.f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < n; ++i) squares += load(x[i]) * load(x[i]);
  const float inv = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) store(out + i, load(w[i]) * round_to(load(x[i]) * inv, out));
}

template <typename T>
void rms_norm_rows(const torch::Tensor& x, const torch::Tensor& weight, torch::Tensor& out, double eps) {
  const int64_t rows = x.size(0), n = x.size(1), stride = x.stride(0);
  const T* px = x.data_ptr<T>();
  const T* pw = weight.data_ptr<T>();
  T* po = out.data_ptr<T>();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) norm_row(px + r * stride, pw, po + r * n, n, static_cast<float>(eps));
  });
}

template <typename T>
void add_rms_norm_rows(torch::Tensor& residual, const torch::Tensor& delta, const torch::Tensor& weight,
                       torch::Tensor& out, double eps) {
  const int64_t rows = residual.size(0), n = residual.size(1), d_stride = delta.stride(0);
  T* px = residual.data_ptr<T>();
  const T* pd = delta.data_ptr<T>();
  const T* pw = weight.data_ptr<T>();
  T* po = out.data_ptr<T>();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* x = px + r * n;
      const T* d = pd + r * d_stride;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) store(x + i, load(x[i]) + load(d[i]));
      norm_row(x, pw, po + r * n, n, static_cast<float>(eps));
    }
  });
}

template <typename T>
void silu_and_mul_rows(const torch::Tensor& gate_up, torch::Tensor& out) {
  const int64_t rows = gate_up.size(0), n = gate_up.size(1) / 2, stride = gate_up.stride(0);
  const T* pg = gate_up.data_ptr<T>();
  T* po = out.data_ptr<T>();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* g = pg + r * stride;
      const T* u = g + n;
      T* o = po + r * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float gate = load(g[i]);
        store(o + i, round_to(gate / (1.f + std::exp(-gate)), o) * load(u[i]));
      }
    }
  });
}

template <typename T>
void rope_rows(torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t num_heads,
               int64_t head_dim) {
  const int64_t rows = x.size(0), stride = x.stride(0), half = head_dim / 2;
  T* px = x.data_ptr<T>();
  const T* pc = cos.data_ptr<T>();
  const T* ps = sin.data_ptr<T>();
  const int64_t c_stride = cos.stride(0), s_stride = sin.stride(0);
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* c = pc + r * c_stride;
      const T* s = ps + r * s_stride;
      for (int64_t h = 0; h < num_heads; ++h) {
        T* lo = px + r * stride + h * head_dim;
        T* hi = lo + half;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float a = load(lo[i]), b = load(hi[i]);
          // x * cos + rotate_half(x) * sin, each product rounded as torch stores it
          store(lo + i, round_to(a * load(c[i]), lo) + round_to(-b * load(s[i]), lo));
          store(hi + i, round_to(b * load(c[i + half]), lo) + round_to(a * load(s[i + half]), lo));
        }
      }
    }
  });
}

void check_same_dtype(const torch::Tensor& x, const torch::Tensor& other, const char* name) {
  TORCH_CHECK(other.dtype() == x.dtype(), name, ": every tensor must have x's dtype (", x.dtype(), ")");
}

}  // namespace

// weight * x / sqrt(mean(x^2) + eps), per row. x [T, H], weight [H].
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check_rows(x, "rms_norm");
  check_same_dtype(x, weight, "rms_norm");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1), "rms_norm: weight [H]");
  auto out = torch::empty({x.size(0), x.size(1)}, x.options());
  if (x.dtype() == torch::kFloat32)
    rms_norm_rows<float>(x, weight, out, eps);
  else
    rms_norm_rows<at::BFloat16>(x, weight, out, eps);
  return out;
}

// residual += delta (in place), then returns rms_norm(residual). residual, delta [T, H].
torch::Tensor add_rms_norm(torch::Tensor residual, torch::Tensor delta, torch::Tensor weight, double eps) {
  check_rows(residual, "add_rms_norm");
  check_rows(delta, "add_rms_norm");
  check_same_dtype(residual, delta, "add_rms_norm");
  check_same_dtype(residual, weight, "add_rms_norm");
  TORCH_CHECK(residual.sizes() == delta.sizes() && residual.is_contiguous(), "add_rms_norm: shapes");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == residual.size(1), "add_rms_norm: weight [H]");
  auto out = torch::empty({residual.size(0), residual.size(1)}, residual.options());
  if (residual.dtype() == torch::kFloat32)
    add_rms_norm_rows<float>(residual, delta, weight, out, eps);
  else
    add_rms_norm_rows<at::BFloat16>(residual, delta, weight, out, eps);
  return out;
}

// gate_up [T, 2I] (gate first) -> silu(gate) * up [T, I].
torch::Tensor silu_and_mul(torch::Tensor gate_up) {
  check_rows(gate_up, "silu_and_mul");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "silu_and_mul: odd width");
  auto out = torch::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  if (gate_up.dtype() == torch::kFloat32)
    silu_and_mul_rows<float>(gate_up, out);
  else
    silu_and_mul_rows<at::BFloat16>(gate_up, out);
  return out;
}

// Rotate-half RoPE in place on the first num_heads heads of each row of x [T, width]
// (the q and k heads of a fused qkv projection; v follows, untouched). cos, sin [T, D].
void rope_inplace(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, int64_t num_heads,
                  int64_t head_dim) {
  check_rows(x, "rope_inplace");
  check_rows(cos, "rope_inplace cos");
  check_rows(sin, "rope_inplace sin");
  check_same_dtype(x, cos, "rope_inplace");
  check_same_dtype(x, sin, "rope_inplace");
  TORCH_CHECK(head_dim % 2 == 0 && num_heads * head_dim <= x.size(1), "rope_inplace: heads exceed the row");
  TORCH_CHECK(cos.size(0) == x.size(0) && cos.size(1) == head_dim && sin.sizes() == cos.sizes(),
              "rope_inplace: cos/sin [T, head_dim]");
  if (x.dtype() == torch::kFloat32)
    rope_rows<float>(x, cos, sin, num_heads, head_dim);
  else
    rope_rows<at::BFloat16>(x, cos, sin, num_heads, head_dim);
}

// Scatter K/V rows into the paged layer cache: row t of key and value [T, Hkv, D] (each
// token's [Hkv, D] dense, tokens strided) -> cache[slot / bs, 0 | 1, slot % bs], the cache's
// dtype. Two memcpys per token where torch's index_put_ costs ~80 us a call at decode sizes.
void write_kv(torch::Tensor cache, torch::Tensor key, torch::Tensor value, torch::Tensor slots) {
  TORCH_CHECK(cache.dim() == 5 && key.dim() == 3 && value.sizes() == key.sizes(), "write_kv: shapes");
  TORCH_CHECK(key.dtype() == cache.dtype() && value.dtype() == cache.dtype(), "write_kv: key, value and cache dtypes differ");
  TORCH_CHECK(slots.dtype() == torch::kInt64 && slots.dim() == 1 && slots.size(0) == key.size(0), "write_kv: slots");
  const int64_t row = cache.size(3) * cache.size(4), block_size = cache.size(2);
  TORCH_CHECK(key.size(1) * key.size(2) == row, "write_kv: rows of key and cache differ");
  TORCH_CHECK(cache.stride(2) == row && cache.stride(3) == cache.size(4) && cache.stride(4) == 1,
              "write_kv: a cache block's rows must be dense");
  TORCH_CHECK(key.stride(2) == 1 && key.stride(1) == key.size(2) && value.stride(2) == 1 &&
              value.stride(1) == value.size(2), "write_kv: each token's K/V row must be dense");
  const int64_t num_bytes = row * cache.element_size(), num_blocks = cache.size(0);
  auto* base = static_cast<char*>(cache.data_ptr());
  const auto* k = static_cast<const char*>(key.data_ptr());
  const auto* v = static_cast<const char*>(value.data_ptr());
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t element = cache.element_size();
  for (int64_t t = 0; t < key.size(0); ++t) {
    const int64_t block = slot[t] / block_size, offset = slot[t] % block_size;
    TORCH_CHECK(slot[t] >= 0 && block < num_blocks, "write_kv: slot ", slot[t], " is outside the cache");
    char* target = base + (block * cache.stride(0) + offset * cache.stride(2)) * element;
    std::memcpy(target, k + t * key.stride(0) * element, num_bytes);
    std::memcpy(target + cache.stride(1) * element, v + t * value.stride(0) * element, num_bytes);
  }
}
