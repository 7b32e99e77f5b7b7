// x @ W^T for a GPTQ weight in torch's CPU int4 packing, without unpacking it to memory.
//
// Each thread takes 64-output blocks of W; per block it dequantizes the 4-bit codes once, as
// w = q * scale + (zero - 8 * scale) in fp32 (the int4 kernel's weights), split into two bf16
// halves hi = bf16(w) and lo = bf16(w - hi) so that hi + lo carries w to ~2^-17 (one bf16
// rounding would move outputs by ~2^-9 and let a request decode differently in a batch than
// alone). The halves go straight into the VNNI-2 layout AMX reads, in a buffer that stays in
// the core's cache, and AMX tiles multiply every 32-row tile of x by both into one fp32
// accumulator. Only the codes are read from memory: 0.5 byte per weight, against 4 written
// and 4 read again by unpack-then-GEMM.
//
// The tile loop is ours, not oneDNN's brgemm ukernel (at::native::cpublas::brgemm): that one
// ran at AVX512-BF16 speed here (~350 GFLOPS a core, 13 us for 32 x 1024 x 64), these tiles
// at several times that.
//
// Needs AVX512-BF16 and AMX (the caller checks); built at load by int4_amx.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <torch/library.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t BLOCK_N = 64;  // outputs per block of torch's AVX-512 int4 packing
constexpr int64_t TILE_M = 32;   // rows per tile pass: 2 AMX tiles of 16 rows
constexpr int64_t TILE_K = 32;   // bf16 of K per AMX tile row (64 bytes)
constexpr int64_t VNNI_ROW = 2 * BLOCK_N;  // bf16 per k pair in a block's VNNI-2 buffer

// Linux hands out AMX's tile state only to a process that asks (arch_prctl), once.
bool request_amx() {
  constexpr int ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

// Tiles 0-3 accumulate a 32 x 32 fp32 output (2 x 2 tiles of 16 x 16), 4-5 hold two 16-row
// slices of x, 6-7 two 16-column slices of a half; every tile 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// acc [32 x 64] fp32 = a [32 x K] (row stride K) @ (hi + lo), hi and lo K x 64 in VNNI-2.
void tile_gemm(const at::BFloat16* a, int64_t K, const at::BFloat16* hi, const at::BFloat16* lo,
               float* acc) {
  const int64_t a_stride = K * 2, b_stride = VNNI_ROW * 2, c_stride = BLOCK_N * 4;
  for (int64_t half = 0; half < BLOCK_N; half += 32) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k = 0; k < K; k += TILE_K) {
      _tile_loadd(4, a + k, a_stride);
      _tile_loadd(5, a + 16 * K + k, a_stride);
      for (const at::BFloat16* b : {hi, lo}) {
        const at::BFloat16* pairs = b + (k / 2) * VNNI_ROW + 2 * half;
        _tile_loadd(6, pairs, b_stride);
        _tile_loadd(7, pairs + 32, b_stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
    _tile_stored(0, acc + half, c_stride);
    _tile_stored(1, acc + half + 16, c_stride);
    _tile_stored(2, acc + 16 * BLOCK_N + half, c_stride);
    _tile_stored(3, acc + 16 * BLOCK_N + half + 16, c_stride);
  }
}

// Four vectors of 16: outputs 0-15 and 16-31 are the low nibbles of the row's 32 bytes,
// 32-47 and 48-63 the high ones.
inline void dequantize_row(const uint8_t* codes, const __m512 scale[4], const __m512 shift[4],
                           __m512 w[4]) {
  const __m512i first = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  const __m512i second = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16)));
  const __m512i low = _mm512_set1_epi32(15);
  const __m512i q[4] = {_mm512_and_si512(first, low), _mm512_and_si512(second, low),
                        _mm512_srli_epi32(first, 4), _mm512_srli_epi32(second, 4)};
  for (int v = 0; v < 4; ++v) w[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q[v]), scale[v], shift[v]);
}

inline __m512 widen(__m256i bf16) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16));
}

// Rows k (even) and k + 1 (odd) of 16 outputs, rounded to bf16 and stored as VNNI-2 pairs
// ((k, n), (k + 1, n), ...); returns what the rounding left, for the low half.
inline void store_rounded(const __m512 even, const __m512 odd, at::BFloat16* out,
                          __m512& even_rest, __m512& odd_rest) {
  // lanes 0-15 even, 16-31 odd; then interleaved: lane i takes (i % 2) * 16 + i / 2
  const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(odd, even);
  const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                         24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                         16, 0);
  _mm512_storeu_si512(out, _mm512_permutexvar_epi16(pairs, halves));
  even_rest = _mm512_sub_ps(even, widen(_mm512_castsi512_si256(halves)));
  odd_rest = _mm512_sub_ps(odd, widen(_mm512_extracti64x4_epi64(halves, 1)));
}

// The block's [hi | lo] halves, each K x 64 in VNNI-2 layout.
void dequantize_block(const uint8_t* codes, const at::BFloat16* scales_and_zeros, int64_t K,
                      int64_t N, int64_t group, int64_t first_output, at::BFloat16* hi,
                      at::BFloat16* lo) {
  __m512 scale[4], shift[4];
  for (int64_t k = 0; k < K; k += 2) {  // a group is even, so k and k + 1 share it
    if (k % group == 0) {
      alignas(64) float s[BLOCK_N], h[BLOCK_N];
      const at::BFloat16* sz = scales_and_zeros + ((k / group) * N + first_output) * 2;
      for (int64_t j = 0; j < BLOCK_N; ++j) {
        s[j] = static_cast<float>(sz[2 * j]);
        h[j] = static_cast<float>(sz[2 * j + 1]) - 8.0f * s[j];
      }
      for (int v = 0; v < 4; ++v) {
        scale[v] = _mm512_load_ps(s + 16 * v);
        shift[v] = _mm512_load_ps(h + 16 * v);
      }
    }
    __m512 even[4], odd[4];
    dequantize_row(codes + k * (BLOCK_N / 2), scale, shift, even);
    dequantize_row(codes + (k + 1) * (BLOCK_N / 2), scale, shift, odd);
    for (int v = 0; v < 4; ++v) {
      __m512 even_rest, odd_rest, unused_even, unused_odd;
      store_rounded(even[v], odd[v], hi + k * BLOCK_N + 32 * v, even_rest, odd_rest);
      store_rounded(even_rest, odd_rest, lo + k * BLOCK_N + 32 * v, unused_even, unused_odd);
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
  TORCH_CHECK(K % TILE_K == 0, "K must be a multiple of ", TILE_K);
  static const bool amx = request_amx();
  TORCH_CHECK(amx, "the kernel did not get AMX's tile state from the OS");
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
    // the last rows, zero-padded to a whole tile (AMX then reads no rows beyond x)
    const int64_t full = M - M % TILE_M;
    std::vector<at::BFloat16> tail(M > full ? TILE_M * K : 0);
    std::memcpy(tail.data(), rows + full * K, (M - full) * K * sizeof(at::BFloat16));
    alignas(64) float acc[TILE_M * BLOCK_N];
    const TileConfig config;
    _tile_loadconfig(&config);
    for (int64_t block = first_block; block < end_block; ++block) {
      const int64_t n0 = block * BLOCK_N;
      dequantize_block(codes + block * K * (BLOCK_N / 2), sz, K, N, group, n0, hi.data(),
                       lo.data());
      for (int64_t m0 = 0; m0 < M; m0 += TILE_M) {
        const int64_t m = std::min(TILE_M, M - m0);
        tile_gemm(m0 < full ? rows + m0 * K : tail.data(), K, hi.data(), lo.data(), acc);
        for (int64_t i = 0; i < m; ++i) {
          at::BFloat16* row = out + (m0 + i) * N + n0;
          for (int v = 0; v < 4; ++v) {
            const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_load_ps(acc + i * BLOCK_N + 16 * v));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + 16 * v), (__m256i)rounded);
          }
        }
      }
    }
    _tile_release();
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(autoglm, m) {
  m.def("int4_hilo_mm(Tensor x, Tensor packed, Tensor scales_and_zeros) -> Tensor");
}

TORCH_LIBRARY_IMPL(autoglm, CPU, m) { m.impl("int4_hilo_mm", &int4_hilo_mm); }
