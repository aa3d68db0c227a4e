// The Python module of the native CPU kernels (kernels/cpu_native.py builds it).
#include <torch/extension.h>

torch::Tensor paged_decode(torch::Tensor query, torch::Tensor cache, torch::Tensor block_tables,
                           torch::Tensor lens, double scale);
torch::Tensor paged_prefill(torch::Tensor query, torch::Tensor cache, torch::Tensor block_table,
                            int64_t context_len, double scale);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
torch::Tensor add_rms_norm(torch::Tensor residual, torch::Tensor delta, torch::Tensor weight, double eps);
torch::Tensor silu_and_mul(torch::Tensor gate_up);
void rope_inplace(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, int64_t num_heads, int64_t head_dim);
void write_kv(torch::Tensor cache, torch::Tensor key, torch::Tensor value, torch::Tensor slots);
torch::Tensor small_linear(torch::Tensor x, torch::Tensor w);
bool small_linear_is_fast();
bool packed_linear_is_available();
torch::Tensor pack_linear_weight(torch::Tensor w);
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor packed);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode", &paged_decode, "paged decode attention, fp32 math, fp32/fp16/bf16 queries (any row strides) and K/V read in place");
  m.def("paged_prefill", &paged_prefill, "one sequence's prefill chunk, causal over its paged context, fp32 math and result");
  m.def("rms_norm", &rms_norm, "RMSNorm per row, fp32");
  m.def("add_rms_norm", &add_rms_norm, "residual += delta in place, then RMSNorm of it");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up of a fused [T, 2I] projection");
  m.def("write_kv", &write_kv, "scatter K/V rows into the paged layer cache (same dtype)");
  m.def("small_linear", &small_linear, "x @ w.T for a few rows of x, streaming w once (fp32)");
  m.def("small_linear_is_fast", &small_linear_is_fast, "whether small_linear's AVX-512 body was compiled");
  m.def("packed_linear_is_available", &packed_linear_is_available, "whether this torch exports MKL's packed sgemm");
  m.def("pack_linear_weight", &pack_linear_weight, "w [N, K] -> its MKL-packed form for packed_linear");
  m.def("packed_linear", &packed_linear, "x @ w.T with w packed once by pack_linear_weight (fp32)");
  m.def("rope_inplace", &rope_inplace, "rotate-half RoPE in place on the leading heads of each row");
}
