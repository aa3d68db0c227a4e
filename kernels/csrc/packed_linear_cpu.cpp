// y = x @ w.T through MKL's packed sgemm (fp32, CPU), for the decode and prefill batches that
// small_linear leaves to a gemm.
//
// sgemm re-packs its B operand (the weight) into its panel layout on every call: for the row
// counts of a decode step that re-pack costs about as much as the multiply. Packing each weight
// once at load (cblas_sgemm_pack) and multiplying with cblas_sgemm_compute skips it (1 thread,
// the 124M Llama's 48 layer matrices, weights cold: M=64 124 -> 89 ms, M=128 198 -> 149 ms,
// M=512 655 -> 615 ms, M=1000 1302 -> 1117 ms). One packed copy serves every M: MKL's size
// query gives the same size whatever row count it is asked for, and a weight packed for 128
// rows multiplies 1 to 1000 rows correctly (tests/test_kernels_native.py checks 1 to 515).
// torch's own _mkl_linear uses its pack only when M equals the batch size it was packed for.
//
// The packed buffer: MKL's size query asks for 1.6-4.9x the weight's bytes, but the pack writes
// only about 1.0x of them (the 124M Llama's shapes); the rest of the allocation is never
// touched, so it stays virtual memory.
//
// MKL's cblas symbols come from libtorch_cpu (torch's x86 builds link MKL statically and export
// them); they are declared weak, so a torch without MKL still loads this module and
// packed_linear_is_available() says false.
#include <torch/extension.h>

#include <cstddef>

extern "C" {
// MKL's LP64 interface (MKL_INT = int); enum values as in mkl_cblas.h.
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

bool packed_linear_is_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

namespace {

constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;
constexpr int kPacked = 151;
constexpr int kMatrixB = 162;
constexpr int kPackRows = 128;   // any row count gives the same layout; passed because MKL asks

// The packed form of an [N, K] weight is an fp32 [copies, N, K] tensor: its shape records N and K
// (MKL's size alone cannot: it rounds N and K up to its panels), and `copies` is however many
// weight-sized slabs MKL's size query asks for.
int64_t packed_copies(int64_t n, int64_t k) {
  const size_t bytes = cblas_sgemm_pack_get_size(kMatrixB, kPackRows, static_cast<int>(n), static_cast<int>(k));
  const size_t slab = static_cast<size_t>(n * k) * sizeof(float);
  return static_cast<int64_t>((bytes + slab - 1) / slab);
}

void check_weight(const torch::Tensor& w) {
  TORCH_CHECK(packed_linear_is_available(), "packed_linear: this torch has no MKL packed sgemm");
  TORCH_CHECK(w.dtype() == torch::kFloat32 && w.device().is_cpu(), "packed_linear: fp32 CPU weights only");
  TORCH_CHECK(w.dim() == 2 && w.size(0) > 0 && w.size(1) > 0 && w.size(0) < INT32_MAX && w.size(1) < INT32_MAX,
              "packed_linear: w must be a non-empty [N, K]");
}

}  // namespace

// w [N, K] fp32 -> its packed form, [copies, N, K] fp32 that only packed_linear reads.
torch::Tensor pack_linear_weight(torch::Tensor w) {
  check_weight(w);
  const auto dense = w.contiguous();
  const int64_t N = dense.size(0), K = dense.size(1);
  auto packed = torch::empty({packed_copies(N, K), N, K}, dense.options());
  cblas_sgemm_pack(kRowMajor, kMatrixB, kTrans, kPackRows, N, K, 1.0f, dense.data_ptr<float>(), K,
                   packed.data_ptr<float>());
  return packed;
}

// x [M, K] fp32 with dense rows; packed = pack_linear_weight(w) of a w [N, K]. Returns x @ w.T.
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor packed) {
  TORCH_CHECK(packed_linear_is_available(), "packed_linear: this torch has no MKL packed sgemm");
  TORCH_CHECK(x.dtype() == torch::kFloat32 && packed.dtype() == torch::kFloat32 && x.device().is_cpu(),
              "packed_linear: fp32 CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "packed_linear: x must be [M, K] with dense rows");
  TORCH_CHECK(packed.dim() == 3 && packed.is_contiguous() && packed.size(2) == x.size(1) &&
                  packed.size(0) == packed_copies(packed.size(1), packed.size(2)),
              "packed_linear: packed must be pack_linear_weight of a weight [N, K] with x's K");
  const int64_t M = x.size(0), N = packed.size(1), K = packed.size(2);
  auto out = torch::empty({M, N}, x.options());
  if (M == 0) return out;
  cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, M, N, K, x.data_ptr<float>(), x.stride(0),
                      packed.data_ptr<float>(), K, 0.0f, out.data_ptr<float>(), N);
  return out;
}
