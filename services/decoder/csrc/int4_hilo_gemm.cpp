// x @ W^T for a GPTQ weight in torch's CPU int4 packing, without unpacking it to memory.
//
// Each thread takes 64-output blocks of W; per block it dequantizes the 4-bit codes once, as
// w = q * scale + (zero - 8 * scale) in fp32 (the int4 kernel's weights), split into two bf16
// halves hi = bf16(w) and lo = bf16(w - hi) so that hi + lo carries w to ~2^-17 (one bf16
// rounding would move outputs by ~2^-9 and let a request decode differently in a batch than
// alone). The halves go straight into the VNNI-2 layout AMX reads, in a buffer that stays in
// the core's cache, and oneDNN's brgemm ukernel (at::native::cpublas) multiplies every
// 32-row tile of x by both into one fp32 accumulator. Only the codes are read from memory:
// 0.5 byte per weight, against 4 written and 4 read again by unpack-then-GEMM.
//
// Needs AVX512-BF16 and AMX (the caller checks); built at load by int4_amx.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t BLOCK_N = 64;  // outputs per block of torch's AVX-512 int4 packing
constexpr int64_t TILE_M = 32;   // rows per brgemm call: 2 x 4 AMX accumulator tiles

// Four vectors of 16: outputs 0-15 and 16-31 are the low nibbles of the row's 32 bytes,
// 32-47 and 48-63 the high ones.
inline void dequantize_row(const uint8_t* codes, const float* scale, const float* shift,
                           __m512 w[4]) {
  const __m512i first = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  const __m512i second = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16)));
  const __m512i low = _mm512_set1_epi32(15);
  const __m512i q[4] = {_mm512_and_si512(first, low), _mm512_and_si512(second, low),
                        _mm512_srli_epi32(first, 4), _mm512_srli_epi32(second, 4)};
  for (int v = 0; v < 4; ++v) {
    w[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q[v]), _mm512_loadu_ps(scale + 16 * v),
                           _mm512_loadu_ps(shift + 16 * v));
  }
}

inline __m512 widen(__m256bh v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)v), 16));
}

// 16 outputs of rows k (even) and k + 1 (odd) as VNNI-2 pairs: (k, n), (k + 1, n), ...
inline void store_pairs(at::BFloat16* out, __m256bh even, __m256bh odd) {
  const __m512i pairs = _mm512_or_si512(_mm512_cvtepu16_epi32((__m256i)even),
                                        _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)odd), 16));
  _mm512_storeu_si512(out, pairs);
}

// The block's [hi | lo] halves, each K x 64 in VNNI-2 layout.
void dequantize_block(const uint8_t* codes, const at::BFloat16* scales_and_zeros, int64_t K,
                      int64_t N, int64_t group, int64_t first_output, at::BFloat16* hi,
                      at::BFloat16* lo) {
  alignas(64) float scale[BLOCK_N];
  alignas(64) float shift[BLOCK_N];
  for (int64_t k = 0; k < K; k += 2) {  // a group is even, so k and k + 1 share it
    if (k % group == 0) {
      const at::BFloat16* sz = scales_and_zeros + ((k / group) * N + first_output) * 2;
      for (int64_t j = 0; j < BLOCK_N; ++j) {
        scale[j] = static_cast<float>(sz[2 * j]);
        shift[j] = static_cast<float>(sz[2 * j + 1]) - 8.0f * scale[j];
      }
    }
    __m512 even[4], odd[4];
    dequantize_row(codes + k * (BLOCK_N / 2), scale, shift, even);
    dequantize_row(codes + (k + 1) * (BLOCK_N / 2), scale, shift, odd);
    for (int v = 0; v < 4; ++v) {
      const __m256bh even_hi = _mm512_cvtneps_pbh(even[v]);
      const __m256bh odd_hi = _mm512_cvtneps_pbh(odd[v]);
      store_pairs(hi + k * BLOCK_N + 32 * v, even_hi, odd_hi);
      store_pairs(lo + k * BLOCK_N + 32 * v,
                  _mm512_cvtneps_pbh(_mm512_sub_ps(even[v], widen(even_hi))),
                  _mm512_cvtneps_pbh(_mm512_sub_ps(odd[v], widen(odd_hi))));
    }
  }
}

// x [M, K] bf16; packed [N / 64, K, 32] uint8 (_convert_weight_to_int4pack_for_cpu's bytes);
// scales_and_zeros [K / group, N, 2] bf16, the int4 kernel's (q - 8) * scale + zero form.
at::Tensor int4_hilo_mm(const at::Tensor& x, const at::Tensor& packed,
                        const at::Tensor& scales_and_zeros) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "x must be a contiguous 2-D bf16 tensor");
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.size(2) == BLOCK_N / 2,
              "packed must be contiguous uint8 [N / 64, K, 32]");
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0) * BLOCK_N;
  TORCH_CHECK(packed.size(1) == K, "packed has K = ", packed.size(1), ", x has ", K);
  TORCH_CHECK(scales_and_zeros.dim() == 3 && scales_and_zeros.scalar_type() == at::kBFloat16 &&
                  scales_and_zeros.is_contiguous() && scales_and_zeros.size(1) == N &&
                  scales_and_zeros.size(2) == 2,
              "scales_and_zeros must be contiguous bf16 [K / group, N, 2]");
  const int64_t groups = scales_and_zeros.size(0);
  TORCH_CHECK(groups > 0 && K % groups == 0 && (K / groups) % 2 == 0,
              "K must split into groups of an even size");
  const int64_t group = K / groups;
  auto y = at::empty({M, N}, x.options());
  const auto* rows = x.const_data_ptr<at::BFloat16>();
  const auto* codes = packed.const_data_ptr<uint8_t>();
  const auto* sz = scales_and_zeros.const_data_ptr<at::BFloat16>();
  auto* out = y.mutable_data_ptr<at::BFloat16>();
  at::parallel_for(0, N / BLOCK_N, 1, [&](int64_t first_block, int64_t end_block) {
    std::vector<at::BFloat16> hi(K * BLOCK_N), lo(K * BLOCK_N);
    alignas(64) float acc[TILE_M * BLOCK_N];
    for (int64_t block = first_block; block < end_block; ++block) {
      const int64_t n0 = block * BLOCK_N;
      dequantize_block(codes + block * K * (BLOCK_N / 2), sz, K, N, group, n0, hi.data(),
                       lo.data());
      for (int64_t m0 = 0; m0 < M; m0 += TILE_M) {
        const int64_t m = std::min(TILE_M, M - m0);
        const at::BFloat16* a = rows + m0 * K;
        at::native::cpublas::brgemm(m, BLOCK_N, K, K, BLOCK_N, BLOCK_N, false, a, hi.data(), acc);
        at::native::cpublas::brgemm(m, BLOCK_N, K, K, BLOCK_N, BLOCK_N, true, a, lo.data(), acc);
        for (int64_t i = 0; i < m; ++i) {
          at::BFloat16* row = out + (m0 + i) * N + n0;
          for (int v = 0; v < 4; ++v) {
            const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_load_ps(acc + i * BLOCK_N + 16 * v));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + 16 * v), (__m256i)rounded);
          }
        }
      }
    }
    at::native::cpublas::brgemm_release();  // hand the AMX tiles back to oneDNN's own GEMMs
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(autoglm, m) {
  m.def("int4_hilo_mm(Tensor x, Tensor packed, Tensor scales_and_zeros) -> Tensor");
}

TORCH_LIBRARY_IMPL(autoglm, CPU, m) { m.impl("int4_hilo_mm", &int4_hilo_mm); }
