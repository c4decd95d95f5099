// A CPU decode step of one decoder layer in one call: RMSNorm, the fused q/k/v projection, one token's
// attention (rotary positions, the KV-cache write, grouped-query attention over the cached positions), the
// output projection, RMSNorm, the fused gate/up projection, SwiGLU, the down projection and both residual
// adds. On a small model the quantized matmuls take about 10 ms a token; the same step as some fifty torch
// ops a layer, called from Python, took 3-4 ms more, here well under one.
//
// The maths is transformers' Qwen2 (the Python path in qwq/model is the reference, and tests compare them):
// RMSNorm  y = w * (x / sqrt(mean(x^2) + eps));  rotate-half RoPE  y = x * cos + rotate_half(x) * sin;
// attention softmax(q k^T / sqrt(D)) v with query head h reading KV head h / (H / Hkv).
// Compiled into the same extension as kernels.cpp (see qwq/quant/native.py); float32 activations only, a
// float32 or bfloat16 KV cache.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

// kernels.cpp
torch::Tensor int8_matmul(const torch::Tensor& x, const torch::Tensor& data, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias);
torch::Tensor int4_matmul(const torch::Tensor& x, const torch::Tensor& data, const torch::Tensor& scale,
                          const torch::Tensor& low, int64_t group_size, const c10::optional<torch::Tensor>& bias);
// gguf_kernels.cpp
torch::Tensor gguf_matmul(const torch::Tensor& x, const std::vector<int64_t>& types, int64_t k,
                          const std::vector<std::vector<torch::Tensor>>& planes, const c10::optional<torch::Tensor>& bias);

namespace {

float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float total = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  total = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  __m128 low = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  low = _mm_add_ps(low, _mm_movehl_ps(low, low));
  total = _mm_cvtss_f32(_mm_add_ss(low, _mm_movehdup_ps(low)));
#endif
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

// exp(x) in place, 16 or 8 lanes at a time: x = n ln2 + r, exp(r) by Cephes' polynomial for expf (about
// 1 ulp), times 2^n; inputs are clamped to [-87.3, 88.3], where float32 exp neither underflows nor overflows.
// Scalar std::exp was most of the attention's time (a few thousand calls a layer) and of SwiGLU's.
void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    _mm512_storeu_ps(x + i, _mm512_scalef_ps(p, k));
  }
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), v);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i two_k = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    _mm256_storeu_ps(x + i, _mm256_mul_ps(p, _mm256_castsi256_ps(two_k)));
  }
#endif
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

// rotate-half RoPE of one head vector, from `in` to `out` (which may be the same). Products and sums are rounded
// one at a time, as torch's `x * cos + rotate_half(x) * sin` rounds them (no fused multiply-add): a key written
// to a bfloat16 cache is then exactly the bfloat16 of the Python path's key.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void rotate(const float* in, const float* cos, const float* sin, int64_t d, float* out) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float first = in[i], second = in[i + half];
    out[i] = first * cos[i] - second * sin[i];
    out[i + half] = second * cos[i + half] + first * sin[i + half];
  }
}

void check_float_matrix(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.device().is_cpu(), name,
              " must be a contiguous float32 CPU tensor");
}

}  // namespace

// x (M, K) -> weight * (x / sqrt(mean(x^2) + eps)), row by row
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_float_matrix(x, "x");
  check_float_matrix(weight, "weight");
  const int64_t k = x.size(-1), m = x.numel() / k;
  TORCH_CHECK(weight.numel() == k, "weight has ", weight.numel(), " values for rows of ", k);
  auto out = torch::empty_like(x);
  const float* in = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* y = out.data_ptr<float>();
  auto rows = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = in + r * k;
      const float inverse = 1.f / std::sqrt(dot(row, row, k) / static_cast<float>(k) + static_cast<float>(eps));
      for (int64_t i = 0; i < k; ++i) y[r * k + i] = w[i] * (row[i] * inverse);
    }
  };
  if (m < 16) {
    rows(0, m);  // a decode step: threads would cost more than they save
  } else {
    at::parallel_for(0, m, 8, rows);
  }
  return out;
}

// x (M, 2F), gate then up in each row -> (M, F) silu(gate) * up, the SwiGLU between gate/up and down
torch::Tensor silu_mul(const torch::Tensor& gate_up) {
  check_float_matrix(gate_up, "gate_up");
  const int64_t width = gate_up.size(-1), f = width / 2, m = gate_up.numel() / width;
  TORCH_CHECK(width % 2 == 0, "gate_up width must be even");
  auto sizes = gate_up.sizes().vec();
  sizes.back() = f;
  auto out = torch::empty(sizes, gate_up.options());
  const float* in = gate_up.data_ptr<float>();
  float* y = out.data_ptr<float>();
  at::parallel_for(0, m, 1, [&](int64_t begin, int64_t end) {
    constexpr int64_t kChunk = 256;
    float e[kChunk];
    for (int64_t r = begin; r < end; ++r) {
      const float *gate = in + r * width, *up = gate + f;
      for (int64_t c = 0; c < f; c += kChunk) {
        const int64_t count = std::min(kChunk, f - c);
        for (int64_t i = 0; i < count; ++i) e[i] = -gate[c + i];
        exp_inplace(e, count);
        for (int64_t i = 0; i < count; ++i) y[r * f + c + i] = gate[c + i] / (1.f + e[i]) * up[c + i];
      }
    }
  });
  return out;
}

// ---- One token's attention over the KV cache -----------------------------------------------------------------
// The cache holds float32 or bfloat16 (the top half of a float32, so widening is a 16-bit shift, exact; the
// dot products and weighted sums run in float32 on widened chunks). One row's work is split into tasks of
// (KV head, block of positions). A task reads its block's keys and values once for all the query heads that
// share its KV head (grouped-query attention), a chunk of positions at a time, with an online softmax (a running
// max and sum, as in flash attention). When a sequence's KV heads alone would leave threads idle, its positions
// are split into several blocks (flash-decoding), whose partial results are merged in block order by
// log-sum-exp. The split depends only on the row's own length and the thread count and a task reads nothing of
// another row, so a row's result does not depend on what else is in the batch.
namespace {

using BFloat16 = c10::BFloat16;

constexpr int64_t kMinBlock = 512;  // positions: a smaller block costs more to merge than its thread saves

// `count` cached values as float32: the cache itself when it is float32, else widened into `scratch`
const float* as_float(const float* values, int64_t, float*) { return values; }

const float* as_float(const BFloat16* values, int64_t count, float* scratch) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(values);
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= count; i += 16) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + i)));
    _mm512_storeu_ps(scratch + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
  }
#elif defined(__AVX2__)
  for (; i + 8 <= count; i += 8) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + i)));
    _mm256_storeu_ps(scratch + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
  }
#endif
  for (; i < count; ++i) {
    const uint32_t word = static_cast<uint32_t>(bits[i]) << 16;
    std::memcpy(scratch + i, &word, sizeof(float));
  }
  return scratch;
}

// one head vector into the cache: copied, or rounded to the nearest bfloat16 (ties to even, as torch rounds)
void store(const float* in, int64_t d, float* out) { std::copy_n(in, d, out); }

void store(const float* in, int64_t d, BFloat16* out) {
  for (int64_t i = 0; i < d; ++i) out[i] = BFloat16(in[i]);
}

#if defined(__AVX512F__)
// lane t of the result = the sum of v[t]'s 16 lanes: a tree of shuffles and adds that transposes as it sums
__m512 sum_lanes(const __m512 (&v)[16]) {
  __m512 pairs[8], quads[4];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: v[2i] and v[2i+1] interleaved, halves added
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: v[4i..4i+3], each summed over that lane
    const __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const auto across = [](__m512 a, __m512 b) {  // lanes (a0 + a1, a2 + a3, b0 + b1, b2 + b3)
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  };
  return across(across(quads[0], quads[1]), across(quads[2], quads[3]));
}

// scores for head dimensions of 16 * kParts: the query in registers, 16 keys at a time
template <int kParts>
void scores_fixed(const float* q, int64_t heads, const float* k, int64_t count, float scale, float* s,
                  int64_t stride) {
  constexpr int64_t d = 16 * kParts;
  for (int64_t h = 0; h < heads; ++h) {
    __m512 query[kParts];
    for (int c = 0; c < kParts; ++c) query[c] = _mm512_loadu_ps(q + h * d + 16 * c);
    for (int64_t j = 0; j < count; j += 16) {
      const int64_t n = std::min<int64_t>(16, count - j);
      __m512 sums[16];
      for (int t = 0; t < 16; ++t) {
        const float* row = k + (j + std::min<int64_t>(t, n - 1)) * d;  // past the end: the last key again
        __m512 acc = _mm512_mul_ps(query[0], _mm512_loadu_ps(row));
        for (int c = 1; c < kParts; ++c) acc = _mm512_fmadd_ps(query[c], _mm512_loadu_ps(row + 16 * c), acc);
        sums[t] = acc;
      }
      const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1);
      _mm512_mask_storeu_ps(s + h * stride + j, keep, _mm512_mul_ps(sum_lanes(sums), _mm512_set1_ps(scale)));
    }
  }
}

// o[h] += sum over j of p[h][j] * v[j] for kHeads heads, head dimension a multiple of 64: 4 kHeads accumulators
template <int kHeads>
void add_values_fixed(const float* p, int64_t stride, const float* v, int64_t count, int64_t d, float* o) {
  for (int64_t c = 0; c < d; c += 64) {
    __m512 acc[kHeads][4];
    for (int h = 0; h < kHeads; ++h) {
      for (int u = 0; u < 4; ++u) acc[h][u] = _mm512_loadu_ps(o + h * d + c + 16 * u);
    }
    for (int64_t j = 0; j < count; ++j) {
      const float* row = v + j * d + c;
      const __m512 x0 = _mm512_loadu_ps(row), x1 = _mm512_loadu_ps(row + 16), x2 = _mm512_loadu_ps(row + 32),
                   x3 = _mm512_loadu_ps(row + 48);
      for (int h = 0; h < kHeads; ++h) {
        const __m512 w = _mm512_set1_ps(p[h * stride + j]);
        acc[h][0] = _mm512_fmadd_ps(w, x0, acc[h][0]);
        acc[h][1] = _mm512_fmadd_ps(w, x1, acc[h][1]);
        acc[h][2] = _mm512_fmadd_ps(w, x2, acc[h][2]);
        acc[h][3] = _mm512_fmadd_ps(w, x3, acc[h][3]);
      }
    }
    for (int h = 0; h < kHeads; ++h) {
      for (int u = 0; u < 4; ++u) _mm512_storeu_ps(o + h * d + c + 16 * u, acc[h][u]);
    }
  }
}
#elif defined(__AVX2__)
// lane t of the result = the sum of v[t]'s 8 lanes
__m256 sum_lanes(const __m256 (&v)[8]) {
  __m256 pairs[4], quads[2];
  for (int i = 0; i < 4; ++i) {
    pairs[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  for (int i = 0; i < 2; ++i) {
    const __m256d a = _mm256_castps_pd(pairs[2 * i]), b = _mm256_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
  }
  return _mm256_add_ps(_mm256_permute2f128_ps(quads[0], quads[1], 0x20), _mm256_permute2f128_ps(quads[0], quads[1], 0x31));
}

// scores for head dimensions of 8 * kParts, 8 keys at a time (the query read from L1: 16 registers are few)
template <int kParts>
void scores_fixed(const float* q, int64_t heads, const float* k, int64_t count, float scale, float* s,
                  int64_t stride) {
  constexpr int64_t d = 8 * kParts;
  for (int64_t h = 0; h < heads; ++h) {
    const float* query = q + h * d;
    for (int64_t j = 0; j < count; j += 8) {
      const int64_t n = std::min<int64_t>(8, count - j);
      __m256 sums[8];
      for (int t = 0; t < 8; ++t) {
        const float* row = k + (j + std::min<int64_t>(t, n - 1)) * d;
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(query), _mm256_loadu_ps(row));
        for (int c = 1; c < kParts; ++c) acc = _mm256_fmadd_ps(_mm256_loadu_ps(query + 8 * c), _mm256_loadu_ps(row + 8 * c), acc);
        sums[t] = acc;
      }
      alignas(32) float out[8];
      _mm256_store_ps(out, _mm256_mul_ps(sum_lanes(sums), _mm256_set1_ps(scale)));
      std::copy_n(out, n, s + h * stride + j);
    }
  }
}

// o[h] += sum over j of p[h][j] * v[j] for kHeads heads, head dimension a multiple of 32
template <int kHeads>
void add_values_fixed(const float* p, int64_t stride, const float* v, int64_t count, int64_t d, float* o) {
  for (int64_t c = 0; c < d; c += 32) {
    __m256 acc[kHeads][4];
    for (int h = 0; h < kHeads; ++h) {
      for (int u = 0; u < 4; ++u) acc[h][u] = _mm256_loadu_ps(o + h * d + c + 8 * u);
    }
    for (int64_t j = 0; j < count; ++j) {
      const float* row = v + j * d + c;
      const __m256 x0 = _mm256_loadu_ps(row), x1 = _mm256_loadu_ps(row + 8), x2 = _mm256_loadu_ps(row + 16),
                   x3 = _mm256_loadu_ps(row + 24);
      for (int h = 0; h < kHeads; ++h) {
        const __m256 w = _mm256_set1_ps(p[h * stride + j]);
        acc[h][0] = _mm256_fmadd_ps(w, x0, acc[h][0]);
        acc[h][1] = _mm256_fmadd_ps(w, x1, acc[h][1]);
        acc[h][2] = _mm256_fmadd_ps(w, x2, acc[h][2]);
        acc[h][3] = _mm256_fmadd_ps(w, x3, acc[h][3]);
      }
    }
    for (int h = 0; h < kHeads; ++h) {
      for (int u = 0; u < 4; ++u) _mm256_storeu_ps(o + h * d + c + 8 * u, acc[h][u]);
    }
  }
}
#endif

// the largest and the sum of n values (vectorized: a scalar loop waits on each compare or add in turn)
float max_of(const float* x, int64_t n) {
  float best = -INFINITY;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 acc = _mm512_set1_ps(-INFINITY);
  for (; i + 16 <= n; i += 16) acc = _mm512_max_ps(acc, _mm512_loadu_ps(x + i));
  best = _mm512_reduce_max_ps(acc);
#elif defined(__AVX2__)
  __m256 acc = _mm256_set1_ps(-INFINITY);
  for (; i + 8 <= n; i += 8) acc = _mm256_max_ps(acc, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  best = *std::max_element(lanes, lanes + 8);
#endif
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

float sum_of(const float* x, int64_t n) {
  float total = 0.f;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_add_ps(acc, _mm512_loadu_ps(x + i));
  total = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  total = std::accumulate(lanes, lanes + 8, 0.f);
#endif
  for (; i < n; ++i) total += x[i];
  return total;
}

// s[h * stride + j] = scale * (q[h] . k[j]) for `heads` queries (heads, d) and `count` keys (count, d)
void scores(const float* q, int64_t heads, const float* k, int64_t count, int64_t d, float scale, float* s,
            int64_t stride) {
#if defined(__AVX512F__)
  if (d == 64) return scores_fixed<4>(q, heads, k, count, scale, s, stride);
  if (d == 128) return scores_fixed<8>(q, heads, k, count, scale, s, stride);
#elif defined(__AVX2__)
  if (d == 64) return scores_fixed<8>(q, heads, k, count, scale, s, stride);
  if (d == 128) return scores_fixed<16>(q, heads, k, count, scale, s, stride);
#endif
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < count; ++j) s[h * stride + j] = dot(q + h * d, k + j * d, d) * scale;
  }
}

// o[h] += sum over j of p[h * stride + j] * v[j] for `heads` outputs (heads, d) and `count` values (count, d)
void add_values(const float* p, int64_t stride, int64_t heads, const float* v, int64_t count, int64_t d, float* o) {
#if defined(__AVX512F__) || defined(__AVX2__)
#if defined(__AVX512F__)
  constexpr int64_t kWidth = 64;
#else
  constexpr int64_t kWidth = 32;
#endif
  if (d % kWidth == 0) {
    int64_t h = 0;
    for (; h + 2 <= heads; h += 2) add_values_fixed<2>(p + h * stride, stride, v, count, d, o + h * d);
    if (h < heads) add_values_fixed<1>(p + h * stride, stride, v, count, d, o + h * d);
    return;
  }
#endif
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < count; ++j) {
      const float w = p[h * stride + j];
      for (int64_t i = 0; i < d; ++i) o[h * d + i] += w * v[j * d + i];
    }
  }
}

// Per-thread buffers of a task: the group's rotated queries, scores of one chunk, one chunk of widened rows.
struct Workspace {
  Workspace(int64_t group, int64_t d, int64_t chunk) : queries(group * d), scores(group * chunk), rows(chunk * d) {}
  std::vector<float> queries, scores, rows;
};

// Attention of `group` queries (group, d) over positions [begin, end) of one KV head's keys and values
// (positions, d), unnormalised: per query the max score, the sum of exp(score - max) and out = the sum of
// exp(score - max) * value, a chunk of positions at a time (online softmax).
template <typename Cache>
void attend_block(const float* queries, int64_t group, const Cache* keys, const Cache* values, int64_t begin,
                  int64_t end, int64_t d, int64_t chunk, Workspace& work, float* peak, float* total, float* out) {
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  std::fill_n(peak, group, -INFINITY);
  std::fill_n(total, group, 0.f);
  std::fill_n(out, group * d, 0.f);
  float* s = work.scores.data();
  for (int64_t first = begin; first < end; first += chunk) {
    const int64_t n = std::min(chunk, end - first);
    scores(queries, group, as_float(keys + first * d, n * d, work.rows.data()), n, d, scale, s, chunk);
    for (int64_t h = 0; h < group; ++h) {
      float* row = s + h * chunk;
      const float highest = std::max(peak[h], max_of(row, n));
      if (highest > peak[h] && total[h] > 0.f) {  // earlier chunks' terms, rescaled to the new max
        const float factor = std::exp(peak[h] - highest);
        total[h] *= factor;
        for (int64_t i = 0; i < d; ++i) out[h * d + i] *= factor;
      }
      peak[h] = highest;
      for (int64_t j = 0; j < n; ++j) row[j] -= highest;
      exp_inplace(row, n);
      total[h] += sum_of(row, n);
    }
    add_values(s, chunk, group, as_float(values + first * d, n * d, work.rows.data()), n, d, out);
  }
}

// How many blocks of positions one row's attention is split into: enough that its KV heads times its blocks
// are a multiple of the thread count (every thread gets the same share of a row alone), none under kMinBlock.
int64_t blocks_for(int64_t length, int64_t kv_heads, int64_t threads) {
  const int64_t wanted = threads / std::gcd(threads, kv_heads);
  return std::max<int64_t>(1, std::min(wanted, length / kMinBlock));
}

struct Task {
  int64_t row, kv_head, begin, end, partial;  // partial: the index of its partial result, or -1 (one block)
};

template <typename Cache>
void attend(const float* in, int64_t width, const float* cos, const float* sin, int64_t angle_rows, Cache* keys,
            Cache* values, const std::vector<int64_t>& slot, const std::vector<int64_t>& position, int64_t num_heads,
            int64_t num_kv_heads, int64_t capacity, int64_t d, float* y) {
  const int64_t batch = static_cast<int64_t>(slot.size()), group = num_heads / num_kv_heads;
  const auto cache_row = [&](Cache* cache, int64_t b, int64_t head, int64_t pos) {
    return cache + ((slot[b] * num_kv_heads + head) * capacity + pos) * d;
  };
  const auto angle = [&](const float* table, int64_t b) { return table + (angle_rows == 1 ? 0 : b) * d; };
  std::vector<float> rotated(d);
  for (int64_t b = 0; b < batch; ++b) {  // every row's new key (rotated) and value into the cache before any reads
    const float* row = in + b * width;
    for (int64_t head = 0; head < num_kv_heads; ++head) {
      rotate(row + (num_heads + head) * d, angle(cos, b), angle(sin, b), d, rotated.data());
      store(rotated.data(), d, cache_row(keys, b, head, position[b]));
      store(row + (num_heads + num_kv_heads + head) * d, d, cache_row(values, b, head, position[b]));
    }
  }
  const int64_t threads = at::get_num_threads();
  std::vector<Task> tasks;
  std::vector<int64_t> first_partial(batch, -1), blocks(batch);
  int64_t partials = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t length = position[b] + 1;
    blocks[b] = blocks_for(length, num_kv_heads, threads);
    if (blocks[b] > 1) first_partial[b] = partials;
    for (int64_t head = 0; head < num_kv_heads; ++head) {
      for (int64_t i = 0; i < blocks[b]; ++i) {
        const int64_t partial = blocks[b] > 1 ? partials++ : -1;
        tasks.push_back({b, head, length * i / blocks[b], length * (i + 1) / blocks[b], partial});
      }
    }
  }
  // a partial result: per query head of the group, max, sum and the unnormalised output (group, d)
  const int64_t partial_size = group * (d + 2);
  std::vector<float> partial(partials * partial_size);
  const int64_t chunk = std::max<int64_t>(16, 8192 / d / 16 * 16);  // 32 KB of float32 rows
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t first, int64_t last) {
    Workspace work(group, d, chunk);
    std::vector<float> own(partial_size);
    for (int64_t index = first; index < last; ++index) {
      const Task& task = tasks[index];
      const float* row = in + task.row * width;
      for (int64_t h = 0; h < group; ++h) {
        const int64_t head = task.kv_head * group + h;
        rotate(row + head * d, angle(cos, task.row), angle(sin, task.row), d, work.queries.data() + h * d);
      }
      float* result = task.partial >= 0 ? partial.data() + task.partial * partial_size : own.data();
      attend_block(work.queries.data(), group, cache_row(keys, task.row, task.kv_head, 0),
                   cache_row(values, task.row, task.kv_head, 0), task.begin, task.end, d, chunk, work, result,
                   result + group, result + 2 * group);
      if (task.partial < 0) {
        float* target = y + (task.row * num_heads + task.kv_head * group) * d;
        for (int64_t h = 0; h < group; ++h) {
          const float inverse = 1.f / result[group + h];
          for (int64_t i = 0; i < d; ++i) target[h * d + i] = result[2 * group + h * d + i] * inverse;
        }
      }
    }
  });
  for (int64_t b = 0; b < batch; ++b) {  // split rows: merge their blocks in order, by log-sum-exp
    if (blocks[b] == 1) continue;
    for (int64_t head = 0; head < num_kv_heads; ++head) {
      const float* block = partial.data() + (first_partial[b] + head * blocks[b]) * partial_size;
      for (int64_t h = 0; h < group; ++h) {
        float highest = -INFINITY, total = 0.f;
        for (int64_t i = 0; i < blocks[b]; ++i) highest = std::max(highest, block[i * partial_size + h]);
        float* target = y + (b * num_heads + head * group + h) * d;
        std::fill_n(target, d, 0.f);
        for (int64_t i = 0; i < blocks[b]; ++i) {
          const float* part = block + i * partial_size;
          const float weight = std::exp(part[h] - highest);
          total += weight * part[group + h];
          for (int64_t j = 0; j < d; ++j) target[j] += weight * part[2 * group + h * d + j];
        }
        for (int64_t j = 0; j < d; ++j) target[j] /= total;
      }
    }
  }
}

}  // namespace

// One new token per row b of `qkv` (B, (H + 2 Hkv) D): the fused q/k/v projection with bias. Rotates q and k
// by cos/sin (B or 1, D), writes k and v into cache slot slots[b] (b when no slots are given) at
// positions[b] (B or 1 values) of k_cache / v_cache (slots, Hkv, S, D; float32 or bfloat16, rounded to it),
// and attends over that slot's positions 0..positions[b]. Every row's key and value is written before any row
// attends, so rows of one slot at consecutive positions (speculative decoding) see each other. Returns (B, H D).
torch::Tensor decode_attention(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                               torch::Tensor k_cache, torch::Tensor v_cache, const c10::optional<torch::Tensor>& slots,
                               const torch::Tensor& positions, int64_t num_heads, int64_t num_kv_heads) {
  check_float_matrix(qkv, "qkv");
  check_float_matrix(cos, "cos");
  check_float_matrix(sin, "sin");
  const auto cache_type = k_cache.scalar_type();
  TORCH_CHECK((cache_type == torch::kFloat32 || cache_type == torch::kBFloat16) && v_cache.scalar_type() == cache_type,
              "k_cache and v_cache must both be float32 or both bfloat16");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.device().is_cpu() && v_cache.device().is_cpu(),
              "k_cache and v_cache must be contiguous CPU tensors");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "k_cache and v_cache must be (slots, Hkv, S, D)");
  TORCH_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0, "query heads must be a multiple of KV heads");
  const int64_t batch = qkv.size(0), d = k_cache.size(3), capacity = k_cache.size(2);
  TORCH_CHECK(k_cache.size(1) == num_kv_heads && qkv.size(1) == (num_heads + 2 * num_kv_heads) * d,
              "qkv width does not match the heads");
  const int64_t angle_rows = cos.numel() / d;
  TORCH_CHECK(cos.numel() % d == 0 && (angle_rows == 1 || angle_rows == batch) && sin.numel() == cos.numel(),
              "cos and sin must be (B, D) or (1, D)");
  TORCH_CHECK(positions.scalar_type() == torch::kInt64 && positions.is_contiguous()
                  && (positions.numel() == 1 || positions.numel() == batch),
              "positions must be B or 1 int64 values");
  std::vector<int64_t> slot(batch), position(batch);
  for (int64_t b = 0; b < batch; ++b) {
    position[b] = positions.data_ptr<int64_t>()[positions.numel() == 1 ? 0 : b];
    slot[b] = b;
  }
  if (slots.has_value()) {
    TORCH_CHECK(slots->scalar_type() == torch::kInt64 && slots->is_contiguous() && slots->numel() == batch,
                "slots must be B int64 values");
    std::copy_n(slots->data_ptr<int64_t>(), batch, slot.begin());
  }
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(0 <= slot[b] && slot[b] < k_cache.size(0), "slot ", slot[b], " is not in the cache");
    TORCH_CHECK(0 <= position[b] && position[b] < capacity, "position ", position[b], " is past the cache");
  }
  auto out = torch::empty({batch, num_heads * d}, qkv.options());
  const float *in = qkv.data_ptr<float>(), *cos_table = cos.data_ptr<float>(), *sin_table = sin.data_ptr<float>();
  if (cache_type == torch::kFloat32) {
    attend(in, qkv.size(1), cos_table, sin_table, angle_rows, k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
           slot, position, num_heads, num_kv_heads, capacity, d, out.data_ptr<float>());
  } else {
    attend(in, qkv.size(1), cos_table, sin_table, angle_rows, k_cache.data_ptr<BFloat16>(),
           v_cache.data_ptr<BFloat16>(), slot, position, num_heads, num_kv_heads, capacity, d, out.data_ptr<float>());
  }
  return out;
}

namespace {

// One quantized Linear layer as qwq.quant stores it: int8 (no low, group size 0), int4, or a GGUF tensor's own
// blocks (qwq.quant.gguf_linear) - one part, or several of different types whose outputs lie side by side
// (Q/K/V of a file that stores V in another type than Q and K).
class QuantizedMatrix {
 public:
  QuantizedMatrix(torch::Tensor data, torch::Tensor scale, c10::optional<torch::Tensor> low,
                  c10::optional<torch::Tensor> bias, int64_t group_size)
      : data_(std::move(data)), scale_(std::move(scale)), low_(std::move(low)), bias_(std::move(bias)),
        group_size_(group_size) {
    TORCH_CHECK(low_.has_value() == (group_size_ > 0), "int4 weights need a low and a group size, int8 neither");
  }

  QuantizedMatrix(std::vector<int64_t> gguf_types, int64_t in_features, std::vector<std::vector<torch::Tensor>> gguf_planes,
                  c10::optional<torch::Tensor> bias)
      : bias_(std::move(bias)), group_size_(0), gguf_types_(std::move(gguf_types)), in_features_(in_features),
        gguf_planes_(std::move(gguf_planes)) {
    TORCH_CHECK(!gguf_types_.empty() && gguf_types_.size() == gguf_planes_.size(), "one GGUF type per part expected");
  }

  // x (M, K) -> (M, N)
  torch::Tensor operator()(const torch::Tensor& x) const {
    if (!gguf_types_.empty()) return gguf_matmul(x, gguf_types_, in_features_, gguf_planes_, bias_);
    return low_.has_value() ? int4_matmul(x, data_, scale_, *low_, group_size_, bias_)
                            : int8_matmul(x, data_, scale_, bias_);
  }

 private:
  torch::Tensor data_, scale_;
  c10::optional<torch::Tensor> low_, bias_;
  int64_t group_size_;
  std::vector<int64_t> gguf_types_;
  int64_t in_features_ = 0;
  std::vector<std::vector<torch::Tensor>> gguf_planes_;
};

// out += residual, element by element (same shapes)
void add_into(torch::Tensor& out, const torch::Tensor& residual) {
  float* y = out.data_ptr<float>();
  const float* r = residual.data_ptr<float>();
  for (int64_t i = 0, n = out.numel(); i < n; ++i) y[i] += r[i];
}

class DecoderLayerStep {
 public:
  DecoderLayerStep(torch::Tensor input_norm, torch::Tensor post_attention_norm, double eps, QuantizedMatrix qkv,
                   QuantizedMatrix o, QuantizedMatrix gate_up, QuantizedMatrix down, int64_t num_heads,
                   int64_t num_kv_heads)
      : input_norm_(std::move(input_norm)), post_attention_norm_(std::move(post_attention_norm)), eps_(eps),
        qkv_(std::move(qkv)), o_(std::move(o)), gate_up_(std::move(gate_up)), down_(std::move(down)),
        num_heads_(num_heads), num_kv_heads_(num_kv_heads) {}

  // x (B, 1, hidden) or (B, hidden), one new token per row; cos, sin, slots, positions as decode_attention
  torch::Tensor operator()(const torch::Tensor& x, torch::Tensor k_cache, torch::Tensor v_cache,
                           const torch::Tensor& cos, const torch::Tensor& sin,
                           const c10::optional<torch::Tensor>& slots, const torch::Tensor& positions) const {
    check_float_matrix(x, "x");
    const torch::Tensor rows = x.view({-1, x.size(-1)});  // (B, hidden)
    const torch::Tensor attention = decode_attention(qkv_(rms_norm(rows, input_norm_, eps_)), cos, sin, k_cache,
                                                     v_cache, slots, positions, num_heads_, num_kv_heads_);
    torch::Tensor hidden = o_(attention);
    add_into(hidden, rows);
    torch::Tensor out = down_(silu_mul(gate_up_(rms_norm(hidden, post_attention_norm_, eps_))));
    add_into(out, hidden);
    return out.view(x.sizes());
  }

 private:
  torch::Tensor input_norm_, post_attention_norm_;
  double eps_;
  QuantizedMatrix qkv_, o_, gate_up_, down_;
  int64_t num_heads_, num_kv_heads_;
};

}  // namespace

// gguf_kernels.cpp: the GGUF block formats' kernels
void register_gguf_kernels(pybind11::module& module);

void register_step_kernels(pybind11::module& module) {
  register_gguf_kernels(module);
  module.def("rms_norm", &rms_norm, "x (M, K) float32 -> weight * x / sqrt(mean(x^2) + eps), row by row");
  module.def("silu_mul", &silu_mul, "(M, 2F) gate | up -> (M, F) silu(gate) * up");
  module.def("decode_attention", &decode_attention,
             "one token per row: rotary q/k, KV-cache write, grouped-query attention over the cached positions");
  pybind11::class_<QuantizedMatrix>(module, "QuantizedMatrix")
      .def(pybind11::init<torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>,
                          int64_t>())
      .def(pybind11::init<std::vector<int64_t>, int64_t, std::vector<std::vector<torch::Tensor>>,
                          c10::optional<torch::Tensor>>())
      .def("__call__", &QuantizedMatrix::operator());
  pybind11::class_<DecoderLayerStep>(module, "DecoderLayerStep")
      .def(pybind11::init<torch::Tensor, torch::Tensor, double, QuantizedMatrix, QuantizedMatrix, QuantizedMatrix,
                          QuantizedMatrix, int64_t, int64_t>())
      .def("__call__", &DecoderLayerStep::operator());
}
