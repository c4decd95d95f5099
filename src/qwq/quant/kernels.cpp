// Weight-only int8 / int4 matrix products for the CPU, written for decode: a few activation rows against a
// large quantized weight, where speed is how close the loop streams the weights to the memory bandwidth.
//
// Activations are quantized on the fly in blocks of 32 (one float scale per block, as llama.cpp's Q8
// activations): to int8 against int4 weights, to int16 against int8 weights. Weights then meet activations in
// integer dot products (AVX-512 VNNI `dpbusd` / `dpwssd`, AVX2 `maddubs` / `madd`) and the float work is one
// multiply-add per block. Four weight rows are
// stored interleaved in 64-byte units, so a thread reads one sequential stream for four output values.
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

#if defined(__AVX2__)
inline float horizontal_sum(__m256 v) {
  __m128 low = _mm256_castps256_ps128(v), high = _mm256_extractf128_ps(v, 1);
  low = _mm_add_ps(low, high);
  low = _mm_add_ps(low, _mm_movehl_ps(low, low));
  low = _mm_add_ss(low, _mm_movehdup_ps(low));
  return _mm_cvtss_f32(low);
}

// eight int32 sums of four products each, of unsigned `u` and signed `s` bytes (AVX2: pairs may not overflow
// int16, which holds for |u| <= 127 or u <= 15)
inline __m256i dot_u8_s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define QWQ_VNNI 1
#endif

// sum of a[i] * b[i]: vectorized, since a serial chain of scalar multiply-adds would wait on each other
float dot_half_float(const at::Half* a, const float* b, int64_t n) {
  int64_t i = 0;
  float total = 0.f;
#if defined(QWQ_VNNI)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 halves = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
    acc = _mm512_fmadd_ps(halves, _mm512_loadu_ps(b + i), acc);
  }
  total = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__) && defined(__F16C__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 halves = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    acc = _mm256_fmadd_ps(halves, _mm256_loadu_ps(b + i), acc);
  }
  total = horizontal_sum(acc);
#endif
  for (; i < n; ++i) total += half_to_float(a[i]) * b[i];
  return total;
}

// ---------------------------------------------------------------- int8: four rows at once
// int8 weights times int16 activations: 16-bit products summed in pairs (AVX-512 VNNI `dpwssd`, AVX2 `madd`)
void int8_four_rows(const uint8_t* data, int64_t k, const Activations<int16_t>& x, float* out) {
  const int64_t blocks = k / kBlock;
  const auto* weights = reinterpret_cast<const int8_t*>(data);
  // block b of row r: unit b/2 of four rows in turn, then the block's half of the unit
  auto block = [&](int r, int64_t b) { return weights + ((b / 2) * kRows + r) * kUnit + (b % 2) * kBlock; };
#if defined(QWQ_VNNI)
  __m512 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m512i xv = _mm512_loadu_si512(x.values + b * kBlock);
    const __m512 scale = _mm512_set1_ps(x.scales[b]);
    for (int r = 0; r < kRows; ++r) {
      if (b % 2 == 0) prefetch(block(r, b) + kAhead);
      const __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block(r, b))));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpwssd_epi32(_mm512_setzero_si512(), wv, xv)), scale, acc[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
#elif defined(__AVX2__)
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i x_first = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.values + b * kBlock));
    const __m256i x_second = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.values + b * kBlock + 16));
    const __m256 scale = _mm256_set1_ps(x.scales[b]);
    for (int r = 0; r < kRows; ++r) {
      const int8_t* w = block(r, b);
      if (b % 2 == 0) prefetch(w + kAhead);
      const __m256i w_first = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
      const __m256i w_second = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16)));
      const __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(w_first, x_first), _mm256_madd_epi16(w_second, x_second));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) out[r] = horizontal_sum(acc[r]);
#else
  for (int r = 0; r < kRows; ++r) {
    float total = 0.f;
    for (int64_t b = 0; b < blocks; ++b) {
      const int8_t* w = block(r, b);
      int32_t sum = 0;
      for (int64_t i = 0; i < kBlock; ++i) sum += int32_t(w[i]) * int32_t(x.values[b * kBlock + i]);
      total += x.scales[b] * float(sum);
    }
    out[r] = total;
  }
#endif
}

// ---------------------------------------------------------------- int4: four rows at once
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

// sum over blocks of x scale * weight scale * dot(q, x), plus sum over groups of low * (sum of x in the group)
template <int kShift>
void int4_four_rows(const uint8_t* data, int64_t k, const at::Half* scale, const at::Half* low,
                    const Activations<int8_t>& x, const float* group_sums, float* out) {
  const int64_t groups = k / (kBlock << kShift), units = k / (2 * kUnit);  // a unit holds 128 weights
  for (int r = 0; r < kRows; ++r) out[r] = dot_half_float(low + r * groups, group_sums, groups);
#if defined(QWQ_VNNI)
  __m512 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i first_two = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i last_two = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
  for (int64_t u = 0; u < units; ++u) {
    const __m512i x_low = _mm512_loadu_si512(x.values + u * 128);
    const __m512i x_high = _mm512_loadu_si512(x.values + u * 128 + 64);
    const __m128 x_scales = _mm_loadu_ps(x.scales + u * 4);
    for (int r = 0; r < kRows; ++r) {
      prefetch(data + (u * kRows + r) * kUnit + kAhead);
      const __m512i packed = _mm512_loadu_si512(data + (u * kRows + r) * kUnit);
      const __m512i q_low = _mm512_and_si512(packed, nibble);
      const __m512i q_high = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
      // x scale * weight scale of the unit's four blocks, spread over the lanes that sum each block
      const __m512 scales = _mm512_castps128_ps512(_mm_mul_ps(x_scales, unit_block_scales<kShift>(scale + r * groups, u)));
      const __m512 s_low = _mm512_permutexvar_ps(first_two, scales);
      const __m512 s_high = _mm512_permutexvar_ps(last_two, scales);
      const __m512 d_low = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q_low, x_low));
      const __m512 d_high = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q_high, x_high));
      acc[r] = _mm512_fmadd_ps(d_low, s_low, acc[r]);
      acc[r] = _mm512_fmadd_ps(d_high, s_high, acc[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) out[r] += _mm512_reduce_add_ps(acc[r]);
#elif defined(__AVX2__)
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  for (int64_t u = 0; u < units; ++u) {
    float block_scales[kRows][4];
    for (int r = 0; r < kRows; ++r) unit_block_scales<kShift>(scale + r * groups, u, block_scales[r]);
    for (int half = 0; half < 2; ++half) {  // 32 bytes: blocks 4u+half (low nibbles) and 4u+2+half (high)
      const int64_t b_low = u * 4 + half, b_high = u * 4 + 2 + half;
      const __m256i x_low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.values + b_low * kBlock));
      const __m256i x_high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.values + b_high * kBlock));
      for (int r = 0; r < kRows; ++r) {
        if (half == 0) prefetch(data + (u * kRows + r) * kUnit + kAhead);
        const __m256i packed = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(data + (u * kRows + r) * kUnit + half * kBlock));
        const __m256i q_low = _mm256_and_si256(packed, nibble);
        const __m256i q_high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8_s8(q_low, x_low)),
                                 _mm256_set1_ps(x.scales[b_low] * block_scales[r][half]), acc[r]);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8_s8(q_high, x_high)),
                                 _mm256_set1_ps(x.scales[b_high] * block_scales[r][2 + half]), acc[r]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) out[r] += horizontal_sum(acc[r]);
#else
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
          low_sum += int32_t(byte & 0x0F) * int32_t(x.values[b_low * kBlock + i]);
          high_sum += int32_t(byte >> 4) * int32_t(x.values[b_high * kBlock + i]);
        }
        total += x.scales[b_low] * block_scales[half] * float(low_sum);
        total += x.scales[b_high] * block_scales[2 + half] * float(high_sum);
      }
    }
    out[r] += total;
  }
#endif
}

using Int4Rows = void (*)(const uint8_t*, int64_t, const at::Half*, const at::Half*, const Activations<int8_t>&, const float*,
                          float*);

Int4Rows int4_rows_for(int64_t group_size) {
  switch (group_size) {
    case 32: return int4_four_rows<0>;
    case 64: return int4_four_rows<1>;
    case 128: return int4_four_rows<2>;
    case 256: return int4_four_rows<3>;
  }
  TORCH_CHECK(false, "int4 group size must be 32, 64, 128 or 256, got ", group_size);
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

}  // namespace

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
  at::parallel_for(0, n / kRows, 4, [&](int64_t begin, int64_t end) {
    float dots[kRows];
    for (int64_t quad = begin; quad < end; ++quad) {
      for (int64_t r = 0; r < m; ++r) {
        int8_four_rows(w + quad * kRows * k, k, quantized.row(r), dots);
        for (int i = 0; i < kRows; ++i) {
          const int64_t row = quad * kRows + i;
          y[r * n + row] = dots[i] * row_scale[row] + (add ? add[row] : 0.f);
        }
      }
    }
  });
  return out;
}

torch::Tensor int4_matmul(const torch::Tensor& x, const torch::Tensor& data, const torch::Tensor& scale,
                          const torch::Tensor& low, int64_t group_size, const c10::optional<torch::Tensor>& bias) {
  const int64_t n = data.size(0) * kRows, k = data.size(1) * 2 / kRows, m = x.size(0);
  check_shapes(x, data, k, n);
  const float* add = bias_values(bias, n);
  const Int4Rows four_rows = int4_rows_for(group_size);
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
  at::parallel_for(0, n / kRows, 4, [&](int64_t begin, int64_t end) {
    float dots[kRows];
    for (int64_t quad = begin; quad < end; ++quad) {
      const int64_t first = quad * kRows;
      for (int64_t r = 0; r < m; ++r) {
        four_rows(w + first * k / 2, k, scales + first * groups, lows + first * groups, quantized.row(r),
                  group_sums.data() + r * groups, dots);
        for (int i = 0; i < kRows; ++i) y[r * n + first + i] = dots[i] + (add ? add[first + i] : 0.f);
      }
    }
  });
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
