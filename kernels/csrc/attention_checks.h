// Input checks shared by the paged attention kernels (paged_decode_cpu.cpp, paged_prefill_cpu.cpp).
#pragma once

#include <torch/extension.h>

// query [.., H, D] fp32, bf16 or fp16 and cache [N, 2, bs, Hkv, D] fp32, fp16 or bf16, both
// with a dense head_dim.
inline void check_query_and_cache(const torch::Tensor& query, const torch::Tensor& cache) {
  const auto kind = cache.scalar_type(), query_kind = query.scalar_type();
  TORCH_CHECK(query_kind == torch::kFloat32 || query_kind == torch::kBFloat16 || query_kind == torch::kFloat16,
              "query dtype must be float32, bfloat16 or float16");
  TORCH_CHECK(kind == torch::kFloat32 || kind == torch::kFloat16 || kind == torch::kBFloat16,
              "cache dtype must be float32, float16 or bfloat16");
  TORCH_CHECK(query.dim() == 3 && query.stride(2) == 1 && cache.dim() == 5 && cache.stride(4) == 1,
              "head_dim dense");
}
