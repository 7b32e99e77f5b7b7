// x @ W^T for a GPTQ weight in torch's CPU int4 packing, on AMX tiles, without unpacking it.
//
// The int4 kernel's weights are w = (q - 8) * scale + zero per group of inputs, so
//   x @ W^T = sum over groups g of  scale_g * (x_g @ (Q_g - 8)^T)  +  zero_g * sum(x_g)
// where q - 8 is a small integer, exact in bf16, and a bf16 x times it is exact in fp32. AMX
// computes each group's x_g @ (Q_g - 8)^T into fp32 tiles; they are scaled and summed in fp32
// on AVX-512. No weight is ever rounded to bf16 (a rounded weight moves outputs by ~2^-9 and
// can make a request decode differently in a batch than alone, on the int4 kernel); the
// result differs from the int4 kernel's only by fp32 rounding (the order of sums and products).
//
// Each thread takes 64-output blocks; per block the codes are turned into bf16 (q - 8) once
// (a 16-entry table lookup), in the VNNI-2 layout AMX reads, in a buffer that stays in the
// core's cache, and every 32-row tile of x runs over it. Only the codes are read from memory:
// 0.5 byte per weight, against 4 written and 4 read again by unpack-then-GEMM.
//
// The tile loop is ours, not oneDNN's brgemm ukernel (at::native::cpublas::brgemm): that one
// ran at AVX512-BF16 speed here (~350 GFLOPS a core).
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
constexpr int64_t HALF_N = 32;   // outputs per pass: 2 AMX tiles of 16 columns
constexpr int64_t VNNI_ROW = 2 * BLOCK_N;  // bf16 per k pair in a block's VNNI-2 buffer

// Linux hands out AMX's tile state only to a process that asks (arch_prctl), once.
bool request_amx() {
  constexpr int ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

// Tiles 0-3 accumulate a 32 x 32 fp32 output (2 x 2 tiles of 16 x 16), 4-5 hold two 16-row
// slices of x, 6-7 two 16-column slices of the codes; every tile 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// Lane i of the result takes lane (i % 2 ? 32 : 0) + offset + i / 2 of (a, b): the first 16
// (offset 0) or last 16 (offset 16) lanes of rows k and k + 1, as VNNI-2 pairs.
__m512i pair_lanes(int offset) {
  alignas(64) int16_t index[32];
  for (int i = 0; i < 32; ++i) index[i] = static_cast<int16_t>((i % 2 ? 32 : 0) + offset + i / 2);
  return _mm512_load_si512(index);
}

inline __m256i load256(const void* address) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(address));
}

inline __m512 widen(__m256i bf16) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16));
}

// A block's codes as bf16 (q - 8), K x 64 in VNNI-2: (k, n) at (k / 2) * 128 + 2 * n + k % 2.
void block_codes(const uint8_t* codes, int64_t K, at::BFloat16* out) {
  alignas(64) at::BFloat16 values[32];
  for (int i = 0; i < 32; ++i) values[i] = at::BFloat16(static_cast<float>(i % 16 - 8));
  const __m512i table = _mm512_load_si512(values);
  const __m512i first = pair_lanes(0), last = pair_lanes(16), nibble = _mm512_set1_epi16(15);
  for (int64_t k = 0; k < K; k += 2) {
    // 32 bytes per row: low nibbles are outputs 0-31, high nibbles outputs 32-63
    const __m512i even = _mm512_cvtepu8_epi16(load256(codes + k * 32));
    const __m512i odd = _mm512_cvtepu8_epi16(load256(codes + (k + 1) * 32));
    const __m512i even_low = _mm512_permutexvar_epi16(_mm512_and_si512(even, nibble), table);
    const __m512i odd_low = _mm512_permutexvar_epi16(_mm512_and_si512(odd, nibble), table);
    const __m512i even_high = _mm512_permutexvar_epi16(_mm512_srli_epi16(even, 4), table);
    const __m512i odd_high = _mm512_permutexvar_epi16(_mm512_srli_epi16(odd, 4), table);
    at::BFloat16* row = out + (k / 2) * VNNI_ROW;
    _mm512_storeu_si512(row, _mm512_permutex2var_epi16(even_low, first, odd_low));
    _mm512_storeu_si512(row + 32, _mm512_permutex2var_epi16(even_low, last, odd_low));
    _mm512_storeu_si512(row + 64, _mm512_permutex2var_epi16(even_high, first, odd_high));
    _mm512_storeu_si512(row + 96, _mm512_permutex2var_epi16(even_high, last, odd_high));
  }
}

// acc [32 x 64] = a [32 x K] (row stride K) @ W^T for the block: per group, AMX's integer
// sums into tiles, then acc += scale * tiles + zero * sum(a over the group).
void tile_gemm(const at::BFloat16* a, const float* a_sums, int64_t K, int64_t group,
               const at::BFloat16* codes, const float* scale, const float* zero, float* acc) {
  const int64_t groups = K / group;
  alignas(64) float tiles[TILE_M * HALF_N];
  for (int64_t half = 0; half < BLOCK_N; half += HALF_N) {
    for (int64_t g = 0; g < groups; ++g) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t k = g * group; k < (g + 1) * group; k += TILE_K) {
        _tile_loadd(4, a + k, K * 2);
        _tile_loadd(5, a + 16 * K + k, K * 2);
        const at::BFloat16* pairs = codes + (k / 2) * VNNI_ROW + 2 * half;
        _tile_loadd(6, pairs, VNNI_ROW * 2);
        _tile_loadd(7, pairs + 32, VNNI_ROW * 2);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, tiles, HALF_N * 4);
      _tile_stored(1, tiles + 16, HALF_N * 4);
      _tile_stored(2, tiles + 16 * HALF_N, HALF_N * 4);
      _tile_stored(3, tiles + 16 * HALF_N + 16, HALF_N * 4);
      const float* s = scale + g * BLOCK_N + half;
      const float* z = zero + g * BLOCK_N + half;
      for (int64_t i = 0; i < TILE_M; ++i) {
        const __m512 sum = _mm512_set1_ps(a_sums[i * groups + g]);
        for (int64_t v = 0; v < HALF_N; v += 16) {
          float* out = acc + i * BLOCK_N + half + v;
          const __m512 base = g == 0 ? _mm512_setzero_ps() : _mm512_load_ps(out);
          const __m512 scaled = _mm512_fmadd_ps(_mm512_load_ps(tiles + i * HALF_N + v),
                                                _mm512_loadu_ps(s + v), base);
          _mm512_store_ps(out, _mm512_fmadd_ps(sum, _mm512_loadu_ps(z + v), scaled));
        }
      }
    }
  }
}

// Each row's sum over each group of K in fp32 (what the zeros multiply), [padded rows, groups];
// rows from M on are zero.
std::vector<float> group_sums(const at::BFloat16* rows, int64_t M, int64_t K, int64_t group,
                              int64_t padded) {
  std::vector<float> sums(padded * (K / group), 0.0f);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t g = 0; g < K / group; ++g) {
      const at::BFloat16* x = rows + m * K + g * group;
      __m512 total = _mm512_setzero_ps();
      for (int64_t k = 0; k < group; k += 16)
        total = _mm512_add_ps(total, widen(load256(x + k)));
      sums[m * (K / group) + g] = _mm512_reduce_add_ps(total);
    }
  }
  return sums;
}

// Per-thread buffers kept across calls: a fresh one per call of 128 KB or more is a fresh mmap,
// page-faulted in again every call (~50 us of a 1024 x 1024 call's ~100 us at one row).
struct Scratch {
  std::vector<at::BFloat16> block, tail;
  std::vector<float> scale, zero;

  template <typename T>
  T* get(std::vector<T>& buffer, int64_t size) {
    if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
    return buffer.data();
  }
};

Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// x [M, K] bf16; packed [N / 64, K, 32] uint8 (_convert_weight_to_int4pack_for_cpu's bytes);
// scales_and_zeros [K / group, N, 2] bf16, the int4 kernel's (q - 8) * scale + zero form.
at::Tensor int4_amx_mm(const at::Tensor& x, const at::Tensor& packed,
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
  TORCH_CHECK(groups > 0 && K % groups == 0 && (K / groups) % TILE_K == 0,
              "K must split into groups of a multiple of ", TILE_K);
  static const bool amx = request_amx();
  TORCH_CHECK(amx, "the kernel did not get AMX's tile state from the OS");
  const int64_t group = K / groups;
  auto y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  const int64_t full = M / TILE_M * TILE_M;  // rows in whole tiles; the rest is padded
  const int64_t padded = (M + TILE_M - 1) / TILE_M * TILE_M;
  const auto* rows = x.const_data_ptr<at::BFloat16>();
  const std::vector<float> sums = group_sums(rows, M, K, group, padded);
  const auto* codes = packed.const_data_ptr<uint8_t>();
  const auto* sz = scales_and_zeros.const_data_ptr<at::BFloat16>();
  auto* out = y.mutable_data_ptr<at::BFloat16>();
  at::parallel_for(0, N / BLOCK_N, 1, [&](int64_t first_block, int64_t end_block) {
    Scratch& scratch = thread_scratch();
    at::BFloat16* block = scratch.get(scratch.block, K * BLOCK_N);
    float* scale = scratch.get(scratch.scale, groups * BLOCK_N);
    float* zero = scratch.get(scratch.zero, groups * BLOCK_N);
    // the last rows zero-padded to a whole tile: AMX reads 32 rows
    at::BFloat16* tail = M > full ? scratch.get(scratch.tail, TILE_M * K) : nullptr;
    if (tail != nullptr) {
      std::memcpy(tail, rows + full * K, (M - full) * K * sizeof(at::BFloat16));
      std::memset(static_cast<void*>(tail + (M - full) * K), 0,
                  (TILE_M - (M - full)) * K * sizeof(at::BFloat16));
    }
    alignas(64) float acc[TILE_M * BLOCK_N];
    const TileConfig config;
    _tile_loadconfig(&config);
    for (int64_t b = first_block; b < end_block; ++b) {
      const int64_t n0 = b * BLOCK_N;
      block_codes(codes + b * K * (BLOCK_N / 2), K, block);
      for (int64_t g = 0; g < groups; ++g) {
        for (int64_t j = 0; j < BLOCK_N; ++j) {
          scale[g * BLOCK_N + j] = static_cast<float>(sz[(g * N + n0 + j) * 2]);
          zero[g * BLOCK_N + j] = static_cast<float>(sz[(g * N + n0 + j) * 2 + 1]);
        }
      }
      for (int64_t m0 = 0; m0 < M; m0 += TILE_M) {
        const at::BFloat16* a = m0 < full ? rows + m0 * K : tail;
        tile_gemm(a, sums.data() + m0 * groups, K, group, block, scale, zero, acc);
        for (int64_t i = 0; i < std::min(TILE_M, M - m0); ++i) {
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
  m.def("int4_amx_mm(Tensor x, Tensor packed, Tensor scales_and_zeros) -> Tensor");
}

TORCH_LIBRARY_IMPL(autoglm, CPU, m) { m.impl("int4_amx_mm", &int4_amx_mm); }
