// A CPU decode step of one decoder layer in one call: RMSNorm, the fused q/k/v projection, one token's
// attention (rotary positions, the KV-cache write, grouped-query attention over the cached positions), the
// output projection, RMSNorm, the fused gate/up projection, SwiGLU, the down projection and both residual
// adds. On a small model the quantized matmuls take about 10 ms a token; the same step as some fifty torch
// ops a layer, called from Python, took 3-4 ms more, here well under one.
//
// The maths is transformers' Qwen2 (the Python path in qwq/model is the reference, and tests compare them):
// RMSNorm  y = w * (x / sqrt(mean(x^2) + eps));  rotate-half RoPE  y = x * cos + rotate_half(x) * sin;
// attention softmax(q k^T / sqrt(D)) v with query head h reading KV head h / (H / Hkv).
// Compiled into the same extension as kernels.cpp (see qwq/quant/native.py); float32 activations only.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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

// out += weight * v, over n values
void add_scaled(float* out, float weight, const float* v, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 w = _mm512_set1_ps(weight);
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_fmadd_ps(w, _mm512_loadu_ps(v + i), _mm512_loadu_ps(out + i)));
#elif defined(__AVX2__)
  const __m256 w = _mm256_set1_ps(weight);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(w, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
#endif
  for (; i < n; ++i) out[i] += weight * v[i];
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

// out (d values) = sum over j of p[j] * v[j d : (j + 1) d], accumulated in registers 64 values at a time
void weighted_sum(const float* p, const float* v, int64_t length, int64_t d, float* out) {
#if defined(__AVX512F__)
  if (d % 64 == 0) {
    for (int64_t c = 0; c < d; c += 64) {
      __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      for (int64_t j = 0; j < length; ++j) {
        const __m512 w = _mm512_set1_ps(p[j]);
        const float* row = v + j * d + c;
        acc0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(row), acc0);
        acc1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(row + 16), acc1);
        acc2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(row + 32), acc2);
        acc3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(row + 48), acc3);
      }
      _mm512_storeu_ps(out + c, acc0);
      _mm512_storeu_ps(out + c + 16, acc1);
      _mm512_storeu_ps(out + c + 32, acc2);
      _mm512_storeu_ps(out + c + 48, acc3);
    }
    return;
  }
#elif defined(__AVX2__)
  if (d % 32 == 0) {
    for (int64_t c = 0; c < d; c += 32) {
      __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      for (int64_t j = 0; j < length; ++j) {
        const __m256 w = _mm256_set1_ps(p[j]);
        const float* row = v + j * d + c;
        acc0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row), acc0);
        acc1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8), acc1);
        acc2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 16), acc2);
        acc3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 24), acc3);
      }
      _mm256_storeu_ps(out + c, acc0);
      _mm256_storeu_ps(out + c + 8, acc1);
      _mm256_storeu_ps(out + c + 16, acc2);
      _mm256_storeu_ps(out + c + 24, acc3);
    }
    return;
  }
#endif
  std::fill_n(out, d, 0.f);
  for (int64_t j = 0; j < length; ++j) add_scaled(out, p[j], v + j * d, d);
}

// rotate-half RoPE of one head vector, from `in` to `out` (which may be the same)
void rotate(const float* in, const float* cos, const float* sin, int64_t d, float* out) {
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

// One new token per row b of `qkv` (B, (H + 2 Hkv) D): the fused q/k/v projection with bias. Rotates q and k
// by cos/sin (B or 1, D), writes k and v into cache slot slots[b] (b when no slots are given) at
// positions[b] (B or 1 values) of k_cache / v_cache (slots, Hkv, S, D), and attends over that slot's
// positions 0..positions[b]. Returns (B, H D).
torch::Tensor decode_attention(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                               torch::Tensor k_cache, torch::Tensor v_cache, const c10::optional<torch::Tensor>& slots,
                               const torch::Tensor& positions, int64_t num_heads, int64_t num_kv_heads) {
  check_float_matrix(qkv, "qkv");
  check_float_matrix(cos, "cos");
  check_float_matrix(sin, "sin");
  check_float_matrix(k_cache, "k_cache");
  check_float_matrix(v_cache, "v_cache");
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
  const int64_t width = qkv.size(1), group = num_heads / num_kv_heads;
  const float* in = qkv.data_ptr<float>();
  float* keys = k_cache.data_ptr<float>();
  float* values = v_cache.data_ptr<float>();
  auto cache_row = [&](float* cache, int64_t b, int64_t head, int64_t pos) {
    return cache + ((slot[b] * num_kv_heads + head) * capacity + pos) * d;
  };
  auto angles = [&](const torch::Tensor& table, int64_t b) { return table.data_ptr<float>() + (angle_rows == 1 ? 0 : b) * d; };
  for (int64_t b = 0; b < batch; ++b) {  // the new keys (rotated) and values go into the cache first
    const float* row = in + b * width;
    for (int64_t head = 0; head < num_kv_heads; ++head) {
      rotate(row + (num_heads + head) * d, angles(cos, b), angles(sin, b), d, cache_row(keys, b, head, position[b]));
      std::copy_n(row + (num_heads + num_kv_heads + head) * d, d, cache_row(values, b, head, position[b]));
    }
  }
  auto out = torch::empty({batch, num_heads * d}, qkv.options());
  float* y = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  at::parallel_for(0, batch * num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(d), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_heads, head = task % num_heads, kv_head = head / group, length = position[b] + 1;
      rotate(in + b * width + head * d, angles(cos, b), angles(sin, b), d, query.data());
      scores.resize(length);
      const float* k_row = cache_row(keys, b, kv_head, 0);
      float peak = -INFINITY;
      for (int64_t j = 0; j < length; ++j) {
        scores[j] = dot(query.data(), k_row + j * d, d) * scale;
        peak = std::max(peak, scores[j]);
      }
      for (int64_t j = 0; j < length; ++j) scores[j] -= peak;
      exp_inplace(scores.data(), length);
      float total = 0.f;
      for (int64_t j = 0; j < length; ++j) total += scores[j];
      for (int64_t j = 0; j < length; ++j) scores[j] /= total;
      weighted_sum(scores.data(), cache_row(values, b, kv_head, 0), length, d, y + b * num_heads * d + head * d);
    }
  });
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
