// Weight-only int8 / int4 matrix products for the CPU, written for decode: a few activation rows against a
// large quantized weight, where speed is how close the loop streams the weights to the memory bandwidth.
//
// Activations are quantized on the fly in blocks of 32 (one float scale per block, as llama.cpp's Q8
// activations): to int8 against int4 weights, to int16 against int8 weights. Weights then meet activations in
// integer dot products (AVX-512 VNNI `dpbusd` / `dpwssd`, AVX2 `maddubs` / `madd`) and the float work is one
// multiply-add per block. Four weight rows are
// stored interleaved in 64-byte units, so a thread reads one sequential stream for four output values. A batch of
// activation rows (one per sequence of a decode step) meets each quad of weight rows in register tiles of a few
// rows (kTile below): the weights are read and unpacked once for all of them, and each row's output is bitwise
// what it computes alone.
//
// Layouts (made by qwq/quant/native.py), N a multiple of 4:
//   int8: data [N/4, 4*K] bytes of int8 q in [-127, 127]; scale [N] float32:                w = q * scale
//   int4: data [N/4, 4*K/2] uint8; scale and low [N, K/group] float16:      w = q * scale + low, q in [0, 15]
//         a row's weights 128c..128c+127 are 64 bytes: byte i holds weight 128c+i in its low nibble and
//         weight 128c+64+i in its high nibble. Groups of 32, 64, 128 or 256 weights.
//   Interleaving: unit u (64 bytes) of rows 4i..4i+3 lies at data[i, (4u + r) * 64].
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 32;   // activation quantization block
constexpr int64_t kUnit = 64;    // bytes of one row stored contiguously before the next row's
constexpr int kRows = 4;         // rows interleaved and computed together
constexpr int64_t kAhead = 16384;  // bytes of weights prefetched ahead of the loop (hardware prefetch stops at pages)

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

inline float half_to_float(at::Half h) {
#if defined(__F16C__)
  return _cvtsh_ss(h.x);
#else
  return static_cast<float>(h);
#endif
}

// One activation row quantized in blocks of 32 to int8 (for int4 weights, whose own error dominates) or to
// int16 (for int8 weights, where int8 activations would cost as much accuracy as the weights do).
template <typename T>
struct Activations {
  const T* values;          // [K]
  const float* scales;      // [K/32]
  const float* block_sums;  // [K/32]: scale * sum of the block's values
};

template <typename T>
class QuantizedActivations {
 public:
  QuantizedActivations(const float* x, int64_t m, int64_t k)
      : k_(k), values_(m * k), scales_(m * k / kBlock), block_sums_(m * k / kBlock) {
    constexpr float kLargest = std::numeric_limits<T>::max();
    const int64_t blocks = k / kBlock;
    for (int64_t row = 0; row < m; ++row) {
      for (int64_t b = 0; b < blocks; ++b) {
        const float* in = x + row * k + b * kBlock;
        float peak = 0.f;
        for (int64_t i = 0; i < kBlock; ++i) peak = std::max(peak, std::fabs(in[i]));
        const float scale = peak / kLargest, inverse = peak > 0.f ? kLargest / peak : 0.f;
        T* out = values_.data() + row * k + b * kBlock;
        int32_t sum = 0;
        for (int64_t i = 0; i < kBlock; ++i) {
          out[i] = static_cast<T>(std::nearbyint(in[i] * inverse));
          sum += out[i];
        }
        scales_[row * blocks + b] = scale;
        block_sums_[row * blocks + b] = scale * static_cast<float>(sum);
      }
    }
  }

  Activations<T> row(int64_t r) const {
    return {values_.data() + r * k_, scales_.data() + r * k_ / kBlock, block_sums_.data() + r * k_ / kBlock};
  }

 private:
  int64_t k_;
  std::vector<T> values_;
  std::vector<float> scales_, block_sums_;
};

// the AVX2 path (with the FMA and F16C every AVX2 CPU has)
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QWQ_AVX2 1
#endif

#if defined(QWQ_AVX2)
// eight int32 sums of four products each, of unsigned `u` and signed `s` bytes (AVX2: pairs may not overflow
// int16, which holds for |u| <= 127 or u <= 15)
inline __m256i dot_u8_s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define QWQ_VNNI 1
#endif

// Activation rows meet each weight quad in tiles of up to kTile rows: the quad's weights are loaded and unpacked
// once per tile and each (activation row, weight row) pair keeps its own accumulator in a register. Every pair
// runs the same operations in the same order whatever else the tile holds, so a row's output is bitwise the one
// it gets alone (batched decoding, and speculative decoding, rely on that).
#if defined(QWQ_VNNI)
constexpr int kTile = 4;  // 16 accumulators of the 32 vector registers
#elif defined(QWQ_AVX2)
constexpr int kTile = 2;  // 8 accumulators of the 16
#else
constexpr int kTile = 4;
#endif

// Calls body(std::integral_constant<int, T>{}, first) for rows [first, first + T) of m, in tiles of up to kTile.
template <typename Body>
inline void for_each_tile(int64_t m, Body&& body) {
  int64_t first = 0;
  for (; first + kTile <= m; first += kTile) body(std::integral_constant<int, kTile>{}, first);
  const int64_t rest = m - first;
  if constexpr (kTile > 1) {
    if (rest == 1) body(std::integral_constant<int, 1>{}, first);
  }
  if constexpr (kTile > 2) {
    if (rest == 2) body(std::integral_constant<int, 2>{}, first);
  }
  if constexpr (kTile > 3) {
    if (rest == 3) body(std::integral_constant<int, 3>{}, first);
  }
}

#if defined(QWQ_VNNI)
// Lane p: the sum of the 16 lanes of v[p], added as a halving tree (lanes i and i + 8, then i and i + 4, i and
// i + 2, 0 and 1: GCC's _mm512_reduce_add_ps), 16 sums in 45 instructions instead of 16 x 8.
inline __m512 lane_sums(const __m512 (&v)[16]) {
  // level by level, two vectors' partial sums share one vector; the inputs are taken transposed so that the
  // last level leaves v[p]'s sum in lane p
  auto input = [&](int i) { return v[(i % 4) * 4 + i / 4]; };
  __m512 eights[8], fours[4], twos[2];
  for (int j = 0; j < 8; ++j) {  // [v's 8 pair sums | w's]
    const __m512 a = input(2 * j), b = input(2 * j + 1);
    eights[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int j = 0; j < 4; ++j) {  // four vectors' 4 sums, one per 128-bit chunk
    const __m512 a = eights[2 * j], b = eights[2 * j + 1];
    fours[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int j = 0; j < 2; ++j) {  // per chunk: two vectors' 2 sums each
    const __m512 a = fours[2 * j], b = fours[2 * j + 1];
    twos[j] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(twos[0], twos[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(twos[0], twos[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Lane 4t + r (t < T): the sum over groups g of low[r * groups + g] * sums[t][g], each pair of rows summed as
// one row alone would be (chunks of 16 groups lane by lane, across the lanes, then the remaining groups one at a
// time), with the 16 pairs sharing every instruction.
template <int T>
inline __m512 low_terms(const at::Half* low, int64_t groups, const float* const* sums) {
  const int64_t whole = groups / 16 * 16, rest = groups - whole;
  __m512 total = _mm512_setzero_ps();
  if (whole > 0) {
    __m512 acc[16];
    for (int p = 0; p < 16; ++p) acc[p] = _mm512_setzero_ps();
    for (int64_t g = 0; g < whole; g += 16) {
      for (int r = 0; r < kRows; ++r) {
        const __m512 halves =
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(low + r * groups + g)));
        for (int t = 0; t < T; ++t) {
          acc[4 * t + r] = _mm512_fmadd_ps(halves, _mm512_loadu_ps(sums[t] + g), acc[4 * t + r]);
        }
      }
    }
    total = lane_sums(acc);
  }
  if (rest > 0) {
    const __mmask16 present = static_cast<__mmask16>((1u << rest) - 1);
    __m512 rows[kRows];
    for (int r = 0; r < kRows; ++r) {
      rows[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(present, low + r * groups + whole));
    }
    // 4 x 16 transposed: chunk j / 4 of columns[j % 4] holds the four rows' values of group whole + j
    const __m512d low01 = _mm512_castps_pd(_mm512_unpacklo_ps(rows[0], rows[1]));
    const __m512d low23 = _mm512_castps_pd(_mm512_unpacklo_ps(rows[2], rows[3]));
    const __m512d high01 = _mm512_castps_pd(_mm512_unpackhi_ps(rows[0], rows[1]));
    const __m512d high23 = _mm512_castps_pd(_mm512_unpackhi_ps(rows[2], rows[3]));
    const __m512 columns[4] = {_mm512_castpd_ps(_mm512_unpacklo_pd(low01, low23)),
                               _mm512_castpd_ps(_mm512_unpackhi_pd(low01, low23)),
                               _mm512_castpd_ps(_mm512_unpacklo_pd(high01, high23)),
                               _mm512_castpd_ps(_mm512_unpackhi_pd(high01, high23))};
    const __m512i in_chunk = _mm512_set_epi32(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
    for (int64_t j = 0; j < rest; ++j) {
      const __m512 lows =
          _mm512_permutexvar_ps(_mm512_add_epi32(in_chunk, _mm512_set1_epi32(4 * (j / 4))), columns[j % 4]);
      __m512 group_sums = _mm512_setzero_ps();
      for (int t = 0; t < T; ++t) {
        const __mmask16 row_lanes = static_cast<__mmask16>(0xF << (4 * t));
        group_sums = _mm512_mask_mov_ps(group_sums, row_lanes, _mm512_set1_ps(sums[t][whole + j]));
      }
      total = _mm512_fmadd_ps(lows, group_sums, total);
    }
  }
  return total;
}
#elif defined(QWQ_AVX2)
// Lane p: the sum of the 8 lanes of v[p], added as a halving tree (lanes i and i + 4, then i and i + 2, 0 and 1).
inline __m256 lane_sums(const __m256 (&v)[8]) {
  auto input = [&](int i) { return v[(i % 2) * 4 + i / 2]; };  // transposed, as for AVX-512
  __m256 fours[4], twos[2];
  for (int j = 0; j < 4; ++j) {  // [v's 4 pair sums | w's]
    const __m256 a = input(2 * j), b = input(2 * j + 1);
    fours[j] = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  }
  for (int j = 0; j < 2; ++j) {  // per 128-bit half: two vectors' 2 sums each
    const __m256 a = fours[2 * j], b = fours[2 * j + 1];
    twos[j] = _mm256_add_ps(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm256_add_ps(_mm256_shuffle_ps(twos[0], twos[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm256_shuffle_ps(twos[0], twos[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Lane 4t + r (t < T <= 2): as the AVX-512 low_terms, in chunks of 8 groups.
template <int T>
inline __m256 low_terms(const at::Half* low, int64_t groups, const float* const* sums) {
  const int64_t whole = groups / 8 * 8, rest = groups - whole;
  __m256 total = _mm256_setzero_ps();
  if (whole > 0) {
    __m256 acc[8];
    for (int p = 0; p < 8; ++p) acc[p] = _mm256_setzero_ps();
    for (int64_t g = 0; g < whole; g += 8) {
      for (int r = 0; r < kRows; ++r) {
        const __m256 halves = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(low + r * groups + g)));
        for (int t = 0; t < T; ++t) {
          acc[4 * t + r] = _mm256_fmadd_ps(halves, _mm256_loadu_ps(sums[t] + g), acc[4 * t + r]);
        }
      }
    }
    total = lane_sums(acc);
  }
  if (rest > 0) {
    __m256 rows[kRows];
    for (int r = 0; r < kRows; ++r) {
      at::Half present[8] = {};
      for (int64_t j = 0; j < rest; ++j) present[j] = low[r * groups + whole + j];
      rows[r] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(present)));
    }
    // 4 x 8 transposed: 128-bit half j / 4 of columns[j % 4] holds the four rows' values of group whole + j
    const __m256d low01 = _mm256_castps_pd(_mm256_unpacklo_ps(rows[0], rows[1]));
    const __m256d low23 = _mm256_castps_pd(_mm256_unpacklo_ps(rows[2], rows[3]));
    const __m256d high01 = _mm256_castps_pd(_mm256_unpackhi_ps(rows[0], rows[1]));
    const __m256d high23 = _mm256_castps_pd(_mm256_unpackhi_ps(rows[2], rows[3]));
    const __m256 columns[4] = {_mm256_castpd_ps(_mm256_unpacklo_pd(low01, low23)),
                               _mm256_castpd_ps(_mm256_unpackhi_pd(low01, low23)),
                               _mm256_castpd_ps(_mm256_unpacklo_pd(high01, high23)),
                               _mm256_castpd_ps(_mm256_unpackhi_pd(high01, high23))};
    const __m256i in_half = _mm256_set_epi32(3, 2, 1, 0, 3, 2, 1, 0);
    for (int64_t j = 0; j < rest; ++j) {
      const __m256 lows =
          _mm256_permutevar8x32_ps(columns[j % 4], _mm256_add_epi32(in_half, _mm256_set1_epi32(4 * (j / 4))));
      __m128 second = _mm_setzero_ps();
      if constexpr (T > 1) second = _mm_set1_ps(sums[1][whole + j]);
      total = _mm256_fmadd_ps(lows, _mm256_set_m128(second, _mm_set1_ps(sums[0][whole + j])), total);
    }
  }
  return total;
}
#else
// out[t][r] (t < T): the sum over groups g of low[r * groups + g] * sums[t][g]
template <int T>
void low_terms(const at::Half* low, int64_t groups, const float* const* sums, float (*out)[kRows]) {
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < kRows; ++r) {
      float total = 0.f;
      for (int64_t g = 0; g < groups; ++g) total += half_to_float(low[r * groups + g]) * sums[t][g];
      out[t][r] = total;
    }
  }
}
#endif

// ---------------------------------------------------------------- int8: four weight rows, T activation rows
// int8 weights times int16 activations: 16-bit products summed in pairs (AVX-512 VNNI `dpwssd`, AVX2 `madd`).
// out[t][r]: activation row t times weight row r, before the weight row's scale; out has kTile rows (those past T
// are left undefined).
template <int T>
void int8_quad(const uint8_t* data, int64_t k, const Activations<int16_t>* x, float (*out)[kRows]) {
  const int64_t blocks = k / kBlock;
  const auto* weights = reinterpret_cast<const int8_t*>(data);
  // block b of row r: unit b/2 of four rows in turn, then the block's half of the unit
  auto block = [&](int r, int64_t b) { return weights + ((b / 2) * kRows + r) * kUnit + (b % 2) * kBlock; };
#if defined(QWQ_VNNI)
  __m512 acc[T][kRows];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < kRows; ++r) acc[t][r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i wv[kRows];
    for (int r = 0; r < kRows; ++r) {
      if (b % 2 == 0) prefetch(block(r, b) + kAhead);
      wv[r] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block(r, b))));
    }
    for (int t = 0; t < T; ++t) {
      const __m512i xv = _mm512_loadu_si512(x[t].values + b * kBlock);
      const __m512 scale = _mm512_set1_ps(x[t].scales[b]);
      for (int r = 0; r < kRows; ++r) {
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(_mm512_setzero_si512(), wv[r], xv));
        acc[t][r] = _mm512_fmadd_ps(dot, scale, acc[t][r]);
      }
    }
  }
  __m512 pairs[kTile * kRows];  // lane 4t + r of the result
  for (int p = 0; p < kTile * kRows; ++p) pairs[p] = p / kRows < T ? acc[p / kRows][p % kRows] : _mm512_setzero_ps();
  _mm512_storeu_ps(&out[0][0], lane_sums(pairs));
#elif defined(QWQ_AVX2)
  __m256 acc[T][kRows];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < kRows; ++r) acc[t][r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i w_first[kRows], w_second[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int8_t* w = block(r, b);
      if (b % 2 == 0) prefetch(w + kAhead);
      w_first[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
      w_second[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16)));
    }
    for (int t = 0; t < T; ++t) {
      const __m256i x_first = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t].values + b * kBlock));
      const __m256i x_second = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t].values + b * kBlock + 16));
      const __m256 scale = _mm256_set1_ps(x[t].scales[b]);
      for (int r = 0; r < kRows; ++r) {
        const __m256i dot =
            _mm256_add_epi32(_mm256_madd_epi16(w_first[r], x_first), _mm256_madd_epi16(w_second[r], x_second));
        acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[t][r]);
      }
    }
  }
  __m256 pairs[kTile * kRows];  // lane 4t + r of the result
  for (int p = 0; p < kTile * kRows; ++p) pairs[p] = p / kRows < T ? acc[p / kRows][p % kRows] : _mm256_setzero_ps();
  _mm256_storeu_ps(&out[0][0], lane_sums(pairs));
#else
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < kRows; ++r) {
      float total = 0.f;
      for (int64_t b = 0; b < blocks; ++b) {
        const int8_t* w = block(r, b);
        int32_t sum = 0;
        for (int64_t i = 0; i < kBlock; ++i) sum += int32_t(w[i]) * int32_t(x[t].values[b * kBlock + i]);
        total += x[t].scales[b] * float(sum);
      }
      out[t][r] = total;
    }
  }
#endif
}

// ---------------------------------------------------------------- int4: four weight rows, T activation rows
// The weight scales of the four blocks (32 weights each) of unit u (128 weights) of one row, for groups of
// 32 << kShift weights.
template <int kShift>
inline void unit_block_scales(const at::Half* scale, int64_t u, float out[4]) {
  if constexpr (kShift == 0) {
    for (int j = 0; j < 4; ++j) out[j] = half_to_float(scale[u * 4 + j]);
  } else if constexpr (kShift == 1) {
    out[0] = out[1] = half_to_float(scale[u * 2]);
    out[2] = out[3] = half_to_float(scale[u * 2 + 1]);
  } else {
    out[0] = out[1] = out[2] = out[3] = half_to_float(scale[(u * 4) >> kShift]);
  }
}

#if defined(QWQ_VNNI)
template <int kShift>
inline __m128 unit_block_scales(const at::Half* scale, int64_t u) {
  if constexpr (kShift == 0) {
    return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scale + u * 4)));
  } else if constexpr (kShift == 1) {
    const __m128 two = _mm_cvtph_ps(_mm_cvtsi32_si128(*reinterpret_cast<const int32_t*>(scale + u * 2)));
    return _mm_unpacklo_ps(two, two);
  } else {
    return _mm_set1_ps(half_to_float(scale[(u * 4) >> kShift]));
  }
}
#endif

// out[t][r]: sum over blocks of x scale * weight scale * dot(q, x), plus sum over groups of low * (sum of x in
// the group), for activation row t and weight row r; out has kTile rows (those past T are left undefined)
template <int kShift, int T>
void int4_quad(const uint8_t* data, int64_t k, const at::Half* scale, const at::Half* low,
               const Activations<int8_t>* x, const float* const* group_sums, float (*out)[kRows]) {
  const int64_t groups = k / (kBlock << kShift), units = k / (2 * kUnit);  // a unit holds 128 weights
#if defined(QWQ_VNNI)
  __m512 acc[T][kRows];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < kRows; ++r) acc[t][r] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  // a dot product's lanes 0-7 sum block 0 (2) of the unit's low (high) nibbles, lanes 8-15 block 1 (3)
  const __m512i first_two = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i last_two = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
  for (int64_t u = 0; u < units; ++u) {
    // the x and weight scales of the unit's blocks, each spread over those lanes: their lane-wise product is
    // x scale * weight scale
    __m512 x_low_scales[T], x_high_scales[T];
    for (int t = 0; t < T; ++t) {
      const __m512 scales = _mm512_castps128_ps512(_mm_loadu_ps(x[t].scales + u * 4));
      x_low_scales[t] = _mm512_permutexvar_ps(first_two, scales);
      x_high_scales[t] = _mm512_permutexvar_ps(last_two, scales);
    }
    for (int r = 0; r < kRows; ++r) {
      prefetch(data + (u * kRows + r) * kUnit + kAhead);
      const __m512i packed = _mm512_loadu_si512(data + (u * kRows + r) * kUnit);
      const __m512i q_low = _mm512_and_si512(packed, nibble);
      const __m512i q_high = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
      const __m512 w_scales = _mm512_castps128_ps512(unit_block_scales<kShift>(scale + r * groups, u));
      const __m512 w_low_scales = _mm512_permutexvar_ps(first_two, w_scales);
      const __m512 w_high_scales = _mm512_permutexvar_ps(last_two, w_scales);
      for (int t = 0; t < T; ++t) {
        const __m512i x_low = _mm512_loadu_si512(x[t].values + u * 128);
        const __m512i x_high = _mm512_loadu_si512(x[t].values + u * 128 + 64);
        const __m512 d_low = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q_low, x_low));
        const __m512 d_high = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q_high, x_high));
        acc[t][r] = _mm512_fmadd_ps(d_low, _mm512_mul_ps(x_low_scales[t], w_low_scales), acc[t][r]);
        acc[t][r] = _mm512_fmadd_ps(d_high, _mm512_mul_ps(x_high_scales[t], w_high_scales), acc[t][r]);
      }
    }
  }
  __m512 pairs[kTile * kRows];  // lane 4t + r of the result
  for (int p = 0; p < kTile * kRows; ++p) pairs[p] = p / kRows < T ? acc[p / kRows][p % kRows] : _mm512_setzero_ps();
  _mm512_storeu_ps(&out[0][0], _mm512_add_ps(low_terms<T>(low, groups, group_sums), lane_sums(pairs)));
#elif defined(QWQ_AVX2)
  __m256 acc[T][kRows];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < kRows; ++r) acc[t][r] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  for (int64_t u = 0; u < units; ++u) {
    float block_scales[kRows][4];
    for (int r = 0; r < kRows; ++r) unit_block_scales<kShift>(scale + r * groups, u, block_scales[r]);
    for (int half = 0; half < 2; ++half) {  // 32 bytes: blocks 4u+half (low nibbles) and 4u+2+half (high)
      const int64_t b_low = u * 4 + half, b_high = u * 4 + 2 + half;
      __m256i q_low[kRows], q_high[kRows];
      for (int r = 0; r < kRows; ++r) {
        if (half == 0) prefetch(data + (u * kRows + r) * kUnit + kAhead);
        const __m256i packed = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(data + (u * kRows + r) * kUnit + half * kBlock));
        q_low[r] = _mm256_and_si256(packed, nibble);
        q_high[r] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
      }
      for (int t = 0; t < T; ++t) {
        const __m256i x_low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t].values + b_low * kBlock));
        const __m256i x_high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t].values + b_high * kBlock));
        for (int r = 0; r < kRows; ++r) {
          acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8_s8(q_low[r], x_low)),
                                      _mm256_set1_ps(x[t].scales[b_low] * block_scales[r][half]), acc[t][r]);
          acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8_s8(q_high[r], x_high)),
                                      _mm256_set1_ps(x[t].scales[b_high] * block_scales[r][2 + half]), acc[t][r]);
        }
      }
    }
  }
  __m256 pairs[kTile * kRows];  // lane 4t + r of the result
  for (int p = 0; p < kTile * kRows; ++p) pairs[p] = p / kRows < T ? acc[p / kRows][p % kRows] : _mm256_setzero_ps();
  _mm256_storeu_ps(&out[0][0], _mm256_add_ps(low_terms<T>(low, groups, group_sums), lane_sums(pairs)));
#else
  low_terms<T>(low, groups, group_sums, out);
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < kRows; ++r) {
      float total = 0.f;
      for (int64_t u = 0; u < units; ++u) {
        const uint8_t* packed = data + (u * kRows + r) * kUnit;
        float block_scales[4];
        unit_block_scales<kShift>(scale + r * groups, u, block_scales);
        for (int half = 0; half < 2; ++half) {
          const int64_t b_low = u * 4 + half, b_high = u * 4 + 2 + half;
          int32_t low_sum = 0, high_sum = 0;
          for (int64_t i = 0; i < kBlock; ++i) {
            const uint8_t byte = packed[half * kBlock + i];
            low_sum += int32_t(byte & 0x0F) * int32_t(x[t].values[b_low * kBlock + i]);
            high_sum += int32_t(byte >> 4) * int32_t(x[t].values[b_high * kBlock + i]);
          }
          total += x[t].scales[b_low] * block_scales[half] * float(low_sum);
          total += x[t].scales[b_high] * block_scales[2 + half] * float(high_sum);
        }
      }
      out[t][r] += total;
    }
  }
#endif
}

void check_shapes(const torch::Tensor& x, const torch::Tensor& data, int64_t k, int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "activations must be a contiguous float32 matrix");
  TORCH_CHECK(x.size(1) == k, "activation width ", x.size(1), " does not match the weight's ", k);
  TORCH_CHECK(data.scalar_type() == torch::kUInt8 && data.is_contiguous() && data.dim() == 2,
              "packed uint8 weight expected");
  TORCH_CHECK(n % kRows == 0 && k % (2 * kUnit) == 0, "weights need N divisible by 4 and K by 128");
}

// the layer's bias (N float32 values) added to each output row, or none
const float* bias_values(const c10::optional<torch::Tensor>& bias, int64_t n) {
  if (!bias.has_value()) return nullptr;
  TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() && bias->numel() == n,
              "bias must be ", n, " contiguous float32 values");
  return bias->data_ptr<float>();
}

// One activation row's outputs of a quad: dot * weight row scale (+ bias), the bias added in the same rounding
// where the CPU fuses multiply-adds. Written out: left to the compiler, tiles of different sizes came out
// contracted differently.
inline void int8_outputs(const float* dots, const float* scale, const float* add, float* y) {
#if defined(QWQ_AVX2)
  const __m128 product = _mm_loadu_ps(dots), row_scale = _mm_loadu_ps(scale);
  _mm_storeu_ps(y, add ? _mm_fmadd_ps(product, row_scale, _mm_loadu_ps(add)) : _mm_mul_ps(product, row_scale));
#else
  if (add) {
    for (int i = 0; i < kRows; ++i) y[i] = dots[i] * scale[i] + add[i];
  } else {
    for (int i = 0; i < kRows; ++i) y[i] = dots[i] * scale[i];
  }
#endif
}

}  // namespace

// The threads split the weight quads (parallel_for's grain is in quads, whatever M), each taking every activation
// row of its quads: a quad's weights come from memory once, and from the cache for its further tiles.
constexpr int64_t kQuadGrain = 4;

torch::Tensor int8_matmul(const torch::Tensor& x, const torch::Tensor& data, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias) {
  const int64_t n = data.size(0) * kRows, k = data.size(1) / kRows, m = x.size(0);
  check_shapes(x, data, k, n);
  const float* add = bias_values(bias, n);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.numel() == n, "one float32 scale per row expected");
  const QuantizedActivations<int16_t> quantized(x.data_ptr<float>(), m, k);
  auto out = torch::empty({m, n}, x.options());
  const uint8_t* w = data.data_ptr<uint8_t>();
  const float* row_scale = scale.data_ptr<float>();
  float* y = out.data_ptr<float>();
  at::parallel_for(0, n / kRows, kQuadGrain, [&](int64_t begin, int64_t end) {
    for (int64_t quad = begin; quad < end; ++quad) {
      for_each_tile(m, [&](auto tile, int64_t first) {
        constexpr int T = decltype(tile)::value;
        Activations<int16_t> rows[T];
        for (int t = 0; t < T; ++t) rows[t] = quantized.row(first + t);
        float dots[kTile][kRows];
        int8_quad<T>(w + quad * kRows * k, k, rows, dots);
        const int64_t row = quad * kRows;
        for (int t = 0; t < T; ++t) {
          int8_outputs(dots[t], row_scale + row, add ? add + row : nullptr, y + (first + t) * n + row);
        }
      });
    }
  });
  return out;
}

namespace {

// y (m, n) = activations @ int4 weight (+ add) for groups of 32 << kShift weights
template <int kShift>
void int4_products(const uint8_t* w, const at::Half* scales, const at::Half* lows, const float* add,
                   const QuantizedActivations<int8_t>& quantized, const float* group_sums, int64_t m, int64_t n,
                   int64_t k, float* y) {
  const int64_t groups = k / (kBlock << kShift);
  at::parallel_for(0, n / kRows, kQuadGrain, [&](int64_t begin, int64_t end) {
    for (int64_t quad = begin; quad < end; ++quad) {
      const int64_t first_row = quad * kRows;
      for_each_tile(m, [&](auto tile, int64_t first) {
        constexpr int T = decltype(tile)::value;
        Activations<int8_t> rows[T];
        const float* sums[T];
        for (int t = 0; t < T; ++t) {
          rows[t] = quantized.row(first + t);
          sums[t] = group_sums + (first + t) * groups;
        }
        float dots[kTile][kRows];
        int4_quad<kShift, T>(w + first_row * k / 2, k, scales + first_row * groups, lows + first_row * groups, rows,
                             sums, dots);
        for (int t = 0; t < T; ++t) {
          for (int i = 0; i < kRows; ++i) {
            y[(first + t) * n + first_row + i] = dots[t][i] + (add ? add[first_row + i] : 0.f);
          }
        }
      });
    }
  });
}

}  // namespace

torch::Tensor int4_matmul(const torch::Tensor& x, const torch::Tensor& data, const torch::Tensor& scale,
                          const torch::Tensor& low, int64_t group_size, const c10::optional<torch::Tensor>& bias) {
  const int64_t n = data.size(0) * kRows, k = data.size(1) * 2 / kRows, m = x.size(0);
  check_shapes(x, data, k, n);
  const float* add = bias_values(bias, n);
  TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128 || group_size == 256,
              "int4 group size must be 32, 64, 128 or 256, got ", group_size);
  TORCH_CHECK(k % group_size == 0, "group size ", group_size, " does not divide K ", k);
  const int64_t groups = k / group_size;
  TORCH_CHECK(scale.scalar_type() == torch::kFloat16 && low.scalar_type() == torch::kFloat16 && scale.is_contiguous()
                  && low.is_contiguous() && scale.numel() == n * groups && low.numel() == scale.numel(),
              "float16 scale and low per group expected");
  const QuantizedActivations<int8_t> quantized(x.data_ptr<float>(), m, k);
  std::vector<float> group_sums(m * groups, 0.f);  // scale * sum of the quantized activations in each group
  for (int64_t r = 0; r < m; ++r) {
    const Activations<int8_t> row = quantized.row(r);
    for (int64_t b = 0; b < k / kBlock; ++b) group_sums[r * groups + b * kBlock / group_size] += row.block_sums[b];
  }
  auto out = torch::empty({m, n}, x.options());
  const uint8_t* w = data.data_ptr<uint8_t>();
  const at::Half* scales = scale.data_ptr<at::Half>();
  const at::Half* lows = low.data_ptr<at::Half>();
  float* y = out.data_ptr<float>();
  switch (group_size) {
    case 32: int4_products<0>(w, scales, lows, add, quantized, group_sums.data(), m, n, k, y); break;
    case 64: int4_products<1>(w, scales, lows, add, quantized, group_sums.data(), m, n, k, y); break;
    case 128: int4_products<2>(w, scales, lows, add, quantized, group_sums.data(), m, n, k, y); break;
    default: int4_products<3>(w, scales, lows, add, quantized, group_sums.data(), m, n, k, y); break;
  }
  return out;
}

void check_row_range(int64_t begin, int64_t end, int64_t n) {
  TORCH_CHECK(begin % kRows == 0 && end % kRows == 0 && 0 <= begin && begin <= end && end <= n, "bad row range");
}

namespace {

// 32 dequantized weights, q * s + m with q given as 32 integer bytes, stored as float32 or bfloat16 (rounded to
// nearest even). AVX-512 BF16 converts 32 at a time; elsewhere the compiler gets a plain loop.
template <typename Out, bool kSigned>
inline void store_block(const uint8_t* q, float s, float m, Out* dst) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if constexpr (std::is_same_v<Out, at::BFloat16>) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    const __m512i first = kSigned ? _mm512_cvtepi8_epi32(_mm256_castsi256_si128(bytes))
                                  : _mm512_cvtepu8_epi32(_mm256_castsi256_si128(bytes));
    const __m512i second = kSigned ? _mm512_cvtepi8_epi32(_mm256_extracti128_si256(bytes, 1))
                                   : _mm512_cvtepu8_epi32(_mm256_extracti128_si256(bytes, 1));
    const __m512 scale = _mm512_set1_ps(s), low = _mm512_set1_ps(m);
    const __m512 a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(first), scale, low);
    const __m512 b = _mm512_fmadd_ps(_mm512_cvtepi32_ps(second), scale, low);
    _mm512_storeu_si512(dst, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)));
    return;
  }
#endif
  for (int64_t i = 0; i < kBlock; ++i) {
    const float value = kSigned ? float(static_cast<int8_t>(q[i])) : float(q[i]);
    dst[i] = Out(value * s + m);
  }
}

// Rows [begin, end) (multiples of 4) of a packed weight as float32 or bfloat16 (rounded to nearest even, as
// torch's own conversion rounds): prompts multiply them in a dense GEMM.
template <typename Out>
void int8_rows(const torch::Tensor& data, const torch::Tensor& scale, int64_t begin, int64_t end, Out* y) {
  const int64_t k = data.size(1) / kRows;
  const auto* w = reinterpret_cast<const int8_t*>(data.data_ptr<uint8_t>());
  const float* row_scale = scale.data_ptr<float>();
  at::parallel_for(begin / kRows, end / kRows, 1, [&](int64_t first, int64_t last) {
    for (int64_t quad = first; quad < last; ++quad) {
      for (int r = 0; r < kRows; ++r) {
        const int64_t row = quad * kRows + r;
        Out* dst = y + (row - begin) * k;
        const float s = row_scale[row];
        for (int64_t u = 0; u < k / kUnit; ++u) {
          const int8_t* unit = w + quad * kRows * k + (u * kRows + r) * kUnit;
          const auto* bytes = reinterpret_cast<const uint8_t*>(unit);
          store_block<Out, true>(bytes, s, 0.f, dst + u * kUnit);
          store_block<Out, true>(bytes + kBlock, s, 0.f, dst + u * kUnit + kBlock);
        }
      }
    }
  });
}

template <typename Out>
void int4_rows(const torch::Tensor& data, const torch::Tensor& scale, const torch::Tensor& low, int64_t group_size,
               int64_t begin, int64_t end, Out* y) {
  const int64_t k = data.size(1) * 2 / kRows, groups = k / group_size;
  const uint8_t* w = data.data_ptr<uint8_t>();
  const at::Half* scales = scale.data_ptr<at::Half>();
  const at::Half* lows = low.data_ptr<at::Half>();
  at::parallel_for(begin / kRows, end / kRows, 1, [&](int64_t first, int64_t last) {
    for (int64_t quad = first; quad < last; ++quad) {
      for (int r = 0; r < kRows; ++r) {
        const int64_t row = quad * kRows + r;
        Out* dst = y + (row - begin) * k;
        for (int64_t u = 0; u < k / (2 * kUnit); ++u) {
          const uint8_t* unit = w + quad * kRows * k / 2 + (u * kRows + r) * kUnit;
          for (int64_t b = 0; b < 4; ++b) {  // block b of the unit: low nibbles for 0-1, high for 2-3
            const int64_t index = u * 2 * kUnit + b * kBlock, g = index / group_size;
            const float s = half_to_float(scales[row * groups + g]), m = half_to_float(lows[row * groups + g]);
            const uint8_t* bytes = unit + (b % 2) * kBlock;
            const int shift = b < 2 ? 0 : 4;
            uint8_t q[kBlock];
            for (int64_t i = 0; i < kBlock; ++i) q[i] = (bytes[i] >> shift) & 0x0F;
            store_block<Out, false>(q, s, m, dst + index);
          }
        }
      }
    }
  });
}

}  // namespace

torch::Tensor int8_dequantize(const torch::Tensor& data, const torch::Tensor& scale, int64_t begin, int64_t end,
                              bool bfloat16) {
  const int64_t n = data.size(0) * kRows, k = data.size(1) / kRows;
  check_row_range(begin, end, n);
  auto out = torch::empty({end - begin, k}, bfloat16 ? torch::kBFloat16 : torch::kFloat32);
  if (bfloat16) {
    int8_rows(data, scale, begin, end, out.data_ptr<at::BFloat16>());
  } else {
    int8_rows(data, scale, begin, end, out.data_ptr<float>());
  }
  return out;
}

torch::Tensor int4_dequantize(const torch::Tensor& data, const torch::Tensor& scale, const torch::Tensor& low,
                              int64_t group_size, int64_t begin, int64_t end, bool bfloat16) {
  const int64_t n = data.size(0) * kRows, k = data.size(1) * 2 / kRows;
  check_row_range(begin, end, n);
  auto out = torch::empty({end - begin, k}, bfloat16 ? torch::kBFloat16 : torch::kFloat32);
  if (bfloat16) {
    int4_rows(data, scale, low, group_size, begin, end, out.data_ptr<at::BFloat16>());
  } else {
    int4_rows(data, scale, low, group_size, begin, end, out.data_ptr<float>());
  }
  return out;
}

// step_kernels.cpp: a decoder layer's decode step and its parts
void register_step_kernels(pybind11::module& module);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("int8_dequantize", &int8_dequantize, "rows [begin, end) of a packed int8 weight as float32 or bfloat16",
             py::arg("data"), py::arg("scale"), py::arg("begin"), py::arg("end"), py::arg("bfloat16") = false);
  module.def("int4_dequantize", &int4_dequantize, "rows [begin, end) of a packed int4 weight as float32 or bfloat16",
             py::arg("data"), py::arg("scale"), py::arg("low"), py::arg("group_size"), py::arg("begin"),
             py::arg("end"), py::arg("bfloat16") = false);
  module.def("int8_matmul", &int8_matmul, "x (M, K) float32 @ packed int8 weight (+ bias) -> (M, N) float32",
             py::arg("x"), py::arg("data"), py::arg("scale"), py::arg("bias") = py::none());
  module.def("int4_matmul", &int4_matmul, "x (M, K) float32 @ packed int4 weight (+ bias) -> (M, N) float32",
             py::arg("x"), py::arg("data"), py::arg("scale"), py::arg("low"), py::arg("group_size"),
             py::arg("bias") = py::none());
  register_step_kernels(module);
}
