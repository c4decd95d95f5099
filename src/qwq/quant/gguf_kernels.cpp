// GGUF weights at the file's own bits: decode-sized matrix products and row dequantization for llama.cpp's
// block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), on the CPU.
//
// Every format stores, per sub-block of 16 or 32 weights, small unsigned integers u and two floats a, b from
// which the file's own dequantization computes w = a * u + b (Q4_0: a = d, b = -8 d; Q4_K: a = d * sc,
// b = -dmin * m; ...). With a * u exact in float32 for every format (at most 24 significant bits), that one
// multiply-add gives bit for bit the value `gguf.quants.dequantize` computes, which the tests check.
//
// Products: an activation row is quantized to int8 in blocks of 32 (one float scale per block, finer than
// llama.cpp's Q8_K blocks of 256), so a weight row times it is, per sub-block j,
//     a_j * dx_j * dot(u_j, xq_j) + b_j * (dx_j * sum(xq_j)),
// integer dot products (AVX-512 VNNI `dpbusd`, AVX2 `maddubs`) scaled once per 4 lanes, and the b terms a
// short float dot product per super-block against the activations' block sums. Each output is one weight row
// against one activation row, computed the same way whatever the number of rows: batched rows equal rows alone.
//
// Layouts: `gguf_pack` rearranges a tensor's blocks, losslessly, into planes (one uint8 tensor [N, bytes per
// row] each) that vector code reads with aligned, in-order loads; nothing is re-rounded. Super-blocks are 256
// weights for the K formats and 128 (four blocks) for the others, whose rows are padded with zero weights to a
// multiple of 128. Canonical 4-bit plane: per 128 weights 64 bytes, byte i holding weight i in its low nibble
// and weight 64 + i in its high one. 1-bit planes: per 128 weights 16 bytes, bit i (little-endian) = weight i.
//   Q4_0 [nibbles, d f16 x4]            Q4_1 [nibbles, d x4, m x4]       Q8_0 [int8 x128, d x4]
//   Q5_0 [nibbles, high bits, d x4]      Q5_1 [nibbles, high bits, d x4, m x4]
//   Q4_K [nibbles, d dmin sc8 m8]        Q5_K [nibbles, high bits, d dmin sc8 m8]   (the 6-bit scales as bytes)
//   Q6_K [ql 128 (the file's), high 2 bits 64, scales16 d]: byte i of the high bits holds weights i, 64 + i,
//        128 + i and 192 + i in bits 0-1, 2-3, 4-5 and 6-7     Q2_K [qs 64 (the file's), scales16 d dmin]
//   Q3_K [qs 64, hmask 32 (the file's), scales16 (6-bit, minus 32, as int8) d]
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define QWQ_GGUF_VNNI 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QWQ_GGUF_AVX2 1
#endif

namespace {

enum Type : int64_t {
  kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14
};

constexpr int64_t kBlock = 32;      // activation quantization block
constexpr int64_t kPad = 128;       // rows of the 32-weight formats are padded to this many weights
constexpr int64_t kAhead = 16384;   // bytes prefetched ahead of the stream (hardware prefetch stops at pages)
constexpr int kMaxPlanes = 4;
constexpr int kTile = 4;            // activation rows sharing one decoded weight row

struct Format {
  int64_t block, block_bytes;  // the file's block: weights, bytes
  int64_t super, sub;          // weights per super-block (one step of the kernels) and per sub-block (a, b)
  int planes;
  int64_t plane_bytes[kMaxPlanes];  // bytes of each plane per super-block
};

constexpr Format kFormats[] = {
    {32, 18, 128, 32, 2, {64, 8}},         {32, 20, 128, 32, 3, {64, 8, 8}},      {32, 22, 128, 32, 3, {64, 16, 8}},
    {32, 24, 128, 32, 4, {64, 16, 8, 8}},  {32, 34, 128, 32, 2, {128, 8}},        {256, 84, 256, 16, 2, {64, 20}},
    {256, 110, 256, 16, 3, {64, 32, 18}},  {256, 144, 256, 32, 2, {128, 20}},     {256, 176, 256, 32, 3, {128, 32, 20}},
    {256, 210, 256, 16, 3, {128, 64, 18}},
};

constexpr int format_index(int64_t type) {
  switch (type) {
    case kQ4_0: return 0;
    case kQ4_1: return 1;
    case kQ5_0: return 2;
    case kQ5_1: return 3;
    case kQ8_0: return 4;
    case kQ2_K: return 5;
    case kQ3_K: return 6;
    case kQ4_K: return 7;
    case kQ5_K: return 8;
    case kQ6_K: return 9;
  }
  return -1;
}

// the kernels' layout of a type (constant-folded where the type is a template argument)
const Format& format_of(int64_t type) {
  const int index = format_index(type);
  TORCH_CHECK(index >= 0, "GGUF tensor type ", type, " has no qwq kernel");
  return kFormats[index];
}
template <int64_t kType>
constexpr const Format& format = kFormats[format_index(kType)];

int64_t padded(int64_t k, const Format& f) { return (k + f.super - 1) / f.super * f.super; }

inline float f16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(bits);
#else
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
#endif
}

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

// One weight row: where each plane's bytes for the row begin.
struct Row {
  const uint8_t* p[kMaxPlanes];
};

// ------------------------------------------------------------------------------------------------ scalar decode
// Per format: the super-block's unsigned values u[super] and per sub-block a, b (w = a * u + b), from the planes:
// the portable path, the dequantization, and the definition of the layouts the vector code reads.

inline void nibbles(const uint8_t* plane, uint8_t* u, int64_t weights) {  // canonical 4-bit plane
  for (int64_t c = 0; c < weights / 128; ++c) {
    for (int i = 0; i < 64; ++i) {
      u[128 * c + i] = plane[64 * c + i] & 0x0F;
      u[128 * c + 64 + i] = plane[64 * c + i] >> 4;
    }
  }
}

inline void high_bits(const uint8_t* plane, uint8_t* u, int64_t weights, uint8_t value) {  // 1-bit plane
  for (int64_t i = 0; i < weights; ++i) u[i] |= ((plane[i / 8] >> (i % 8)) & 1) ? value : 0;
}

inline void two_bits(const uint8_t* qs, uint8_t* u) {  // Q2_K / Q3_K: w[128h + 32t + l] = qs[32h + l] >> 2t
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < 4; ++t)
      for (int l = 0; l < 32; ++l) u[128 * h + 32 * t + l] = (qs[32 * h + l] >> (2 * t)) & 3;
}

// Q4_K / Q5_K: the 6-bit scales and mins of the eight sub-blocks, from the block's 12 packed bytes
inline void k_scales(const uint8_t* s, uint8_t* sc, uint8_t* m) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    m[j] = s[j + 4] & 63;
    sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
    m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
  }
}

// Q3_K: the sixteen 6-bit scales (minus 32) from 12 packed bytes
inline void q3_scales(const uint8_t* s, int* sc) {
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? (s[j] & 0x0F) : (s[j - 8] >> 4);
    const int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    sc[j] = (low | (high << 4)) - 32;
  }
}

// The planes of super-block s of a row.
struct Super {
  const uint8_t* p[kMaxPlanes];
  Super(int64_t type, const Row& w, int64_t s) {
    const Format& f = format_of(type);
    for (int i = 0; i < f.planes; ++i) p[i] = w.p[i] + s * f.plane_bytes[i];
  }
};

// The u values of super-block s (Q8_0's are its signed int8 weights, with b = 0).
void decode_values(int64_t type, const Row& w, int64_t s, uint8_t* u) {
  const Super at(type, w, s);
  switch (type) {
    case kQ4_0:
    case kQ4_1:
      return nibbles(at.p[0], u, 128);
    case kQ5_0:
    case kQ5_1:
      nibbles(at.p[0], u, 128);
      return high_bits(at.p[1], u, 128, 16);
    case kQ8_0:
      std::memcpy(u, at.p[0], 128);
      return;
    case kQ2_K:
      return two_bits(at.p[0], u);
    case kQ3_K:
      two_bits(at.p[0], u);
      for (int i = 0; i < 256; ++i) u[i] |= ((at.p[1][i % 32] >> (i / 32)) & 1) << 2;
      return;
    case kQ4_K:
      return nibbles(at.p[0], u, 256);
    case kQ5_K:
      nibbles(at.p[0], u, 256);
      return high_bits(at.p[1], u, 256, 16);
    case kQ6_K:
      nibbles(at.p[0], u, 256);
      for (int v = 0; v < 4; ++v)
        for (int i = 0; i < 64; ++i) u[64 * v + i] |= ((at.p[1][i] >> (2 * v)) & 3) << 4;
      return;
  }
}

// a and b of each sub-block of super-block s.
void decode_scales(int64_t type, const Row& w, int64_t s, float* a, float* b) {
  const Super at(type, w, s);
  switch (type) {
    case kQ4_0:
    case kQ4_1:
    case kQ5_0:
    case kQ5_1:
    case kQ8_0: {
      const int plane = (type == kQ5_0 || type == kQ5_1) ? 2 : 1;
      for (int j = 0; j < 4; ++j) {
        a[j] = f16(at.p[plane] + 2 * j);
        b[j] = type == kQ4_0 ? -8.f * a[j] : type == kQ5_0 ? -16.f * a[j] : type == kQ8_0 ? 0.f : f16(at.p[plane + 1] + 2 * j);
      }
      return;
    }
    case kQ2_K: {
      const uint8_t* head = at.p[1];
      const float d = f16(head + 16), dmin = f16(head + 18);
      for (int j = 0; j < 16; ++j) {
        a[j] = d * static_cast<float>(head[j] & 0x0F);
        b[j] = -(dmin * static_cast<float>(head[j] >> 4));
      }
      return;
    }
    case kQ3_K: {
      const float d = f16(at.p[2] + 16);
      for (int j = 0; j < 16; ++j) {
        a[j] = d * static_cast<float>(static_cast<int8_t>(at.p[2][j]));
        b[j] = -4.f * a[j];
      }
      return;
    }
    case kQ4_K:
    case kQ5_K: {
      const uint8_t* head = at.p[type == kQ4_K ? 1 : 2];
      const float d = f16(head), dmin = f16(head + 2);
      for (int j = 0; j < 8; ++j) {
        a[j] = d * static_cast<float>(head[4 + j]);
        b[j] = -(dmin * static_cast<float>(head[12 + j]));
      }
      return;
    }
    case kQ6_K: {
      const uint8_t* tail = at.p[2];
      const float d = f16(tail + 16);
      for (int j = 0; j < 16; ++j) {
        a[j] = d * static_cast<float>(static_cast<int8_t>(tail[j]));
        b[j] = -32.f * a[j];
      }
      return;
    }
  }
}

// ------------------------------------------------------------------------------------------------ packing
// One row of the file's blocks -> the row's bytes in each plane (see the layouts at the top).
void pack_row(int64_t type, const uint8_t* in, int64_t k, uint8_t* const* out) {
  const Format& f = format_of(type);
  const int64_t supers = padded(k, f) / f.super, blocks = k / f.block;
  auto put_nibbles = [](const uint8_t* u, int64_t weights, uint8_t* dst) {
    for (int64_t c = 0; c < weights / 128; ++c)
      for (int i = 0; i < 64; ++i) dst[64 * c + i] = (u[128 * c + i] & 0x0F) | (u[128 * c + 64 + i] << 4);
  };
  auto put_bits = [](const uint8_t* u, int64_t weights, uint8_t* dst) {
    std::memset(dst, 0, weights / 8);
    for (int64_t i = 0; i < weights; ++i) dst[i / 8] |= ((u[i] >> 4) & 1) << (i % 8);
  };
  for (int64_t s = 0; s < supers; ++s) {
    uint8_t* dst[kMaxPlanes];
    for (int i = 0; i < f.planes; ++i) dst[i] = out[i] + s * f.plane_bytes[i];
    if (f.block == 32) {  // four blocks a super-block; missing ones (padding) are zero weights with zero scales
      uint8_t u[128] = {0};
      for (int i = 0; i < f.planes; ++i) std::memset(dst[i], 0, f.plane_bytes[i]);
      for (int j = 0; j < 4 && 4 * s + j < blocks; ++j) {
        const uint8_t* block = in + (4 * s + j) * f.block_bytes;
        uint8_t* values = u + 32 * j;
        const uint8_t* qs = block + (type == kQ4_0 ? 2 : type == kQ4_1 ? 4 : type == kQ5_0 ? 6 : 8);
        if (type == kQ8_0) {
          std::memcpy(dst[0] + 32 * j, block + 2, 32);
          std::memcpy(dst[1] + 2 * j, block, 2);
          continue;
        }
        for (int i = 0; i < 16; ++i) {
          values[i] = qs[i] & 0x0F;
          values[i + 16] = qs[i] >> 4;
        }
        if (type == kQ5_0 || type == kQ5_1) {
          uint32_t qh;
          std::memcpy(&qh, block + (type == kQ5_0 ? 2 : 4), 4);
          for (int i = 0; i < 32; ++i) values[i] |= ((qh >> i) & 1) << 4;
        }
        const int scale_plane = (type == kQ5_0 || type == kQ5_1) ? 2 : 1;
        std::memcpy(dst[scale_plane] + 2 * j, block, 2);  // d
        if (type == kQ4_1 || type == kQ5_1) std::memcpy(dst[scale_plane + 1] + 2 * j, block + 2, 2);  // m
      }
      if (type != kQ8_0) put_nibbles(u, 128, dst[0]);
      if (type == kQ5_0 || type == kQ5_1) put_bits(u, 128, dst[1]);
      continue;
    }
    const uint8_t* block = in + s * f.block_bytes;
    switch (type) {
      case kQ2_K:  // scales16 qs64 d dmin
        std::memcpy(dst[0], block + 16, 64);
        std::memcpy(dst[1], block, 16);
        std::memcpy(dst[1] + 16, block + 80, 4);
        break;
      case kQ3_K: {  // hmask32 qs64 scales12 d
        std::memcpy(dst[0], block + 32, 64);
        std::memcpy(dst[1], block, 32);
        int sc[16];
        q3_scales(block + 96, sc);
        for (int j = 0; j < 16; ++j) dst[2][j] = static_cast<uint8_t>(static_cast<int8_t>(sc[j]));
        std::memcpy(dst[2] + 16, block + 108, 2);
        break;
      }
      case kQ4_K:
      case kQ5_K: {  // d dmin scales12 [qh32] qs128; qs: 32 bytes per 64 weights, low nibbles first
        const uint8_t* qs = block + (type == kQ4_K ? 16 : 48);
        uint8_t u[256];
        for (int g = 0; g < 4; ++g)
          for (int l = 0; l < 32; ++l) {
            u[64 * g + l] = qs[32 * g + l] & 0x0F;
            u[64 * g + 32 + l] = qs[32 * g + l] >> 4;
          }
        if (type == kQ5_K)
          for (int i = 0; i < 256; ++i) u[i] |= ((block[16 + i % 32] >> (i / 32)) & 1) << 4;
        put_nibbles(u, 256, dst[0]);
        if (type == kQ5_K) put_bits(u, 256, dst[1]);
        uint8_t* head = dst[type == kQ4_K ? 1 : 2];
        std::memcpy(head, block, 4);  // d, dmin
        k_scales(block + 4, head + 4, head + 12);
        break;
      }
      case kQ6_K: {  // ql128 qh64 scales16 d; qh: w[128h + 32t + l] has bits 2t, 2t + 1 of qh[32h + l]
        std::memcpy(dst[0], block, 128);
        const uint8_t* qh = block + 128;
        for (int i = 0; i < 64; ++i) {
          uint8_t high = 0;
          for (int v = 0; v < 4; ++v) {
            const int weight = 64 * v + i, h = weight / 128, t = (weight % 128) / 32, l = weight % 32;
            high |= ((qh[32 * h + l] >> (2 * t)) & 3) << (2 * v);
          }
          dst[1][i] = high;
        }
        std::memcpy(dst[2], block + 192, 18);
        break;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ activations
// Rows of activations quantized in blocks of 32 to int8, padded with zeros to a multiple of 128.
struct Activations {
  int64_t m, kp;
  std::vector<int8_t> q;              // [m, kp]
  std::vector<float> scale32;         // [m, kp / 32]: dx per block
  std::vector<float> scale16;         // [m, kp / 16]: the same, once per 16 values (the 16-weight sub-blocks')
  std::vector<float> sums16, sums32;  // [m, kp / 16], [m, kp / 32]: dx * sum of the quantized values

  Activations(const float* x, int64_t rows, int64_t k)
      : m(rows), kp((k + kPad - 1) / kPad * kPad), q(rows * kp, 0), scale32(rows * kp / kBlock, 0.f),
        scale16(rows * kp / 16, 0.f), sums16(rows * kp / 16, 0.f), sums32(rows * kp / kBlock, 0.f) {
    for (int64_t r = 0; r < m; ++r) {
      int64_t start = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
      for (; start + kBlock <= k; start += kBlock) quantize_block(x + r * k + start, r * kp + start);
#endif
      for (; start < k; start += kBlock) {
        const int64_t count = std::min(kBlock, k - start);
        const float* in = x + r * k + start;
        float peak = 0.f;
        for (int64_t i = 0; i < count; ++i) peak = std::max(peak, std::fabs(in[i]));
        const float dx = peak / 127.f, inverse = peak > 0.f ? 127.f / peak : 0.f;
        int8_t* out = q.data() + r * kp + start;
        int32_t half[2] = {0, 0};
        for (int64_t i = 0; i < count; ++i) {
          out[i] = static_cast<int8_t>(std::nearbyint(in[i] * inverse));
          half[i / 16] += out[i];
        }
        const int64_t b = (r * kp + start) / kBlock;
        scale32[b] = scale16[2 * b] = scale16[2 * b + 1] = dx;
        sums16[2 * b] = dx * static_cast<float>(half[0]);
        sums16[2 * b + 1] = dx * static_cast<float>(half[1]);
        sums32[b] = dx * static_cast<float>(half[0] + half[1]);
      }
    }
  }
#if defined(__AVX512F__) && defined(__AVX512BW__)
  // the 32 values at `in` into block `at / 32`: what the scalar loop below computes, 16 lanes at a time
  void quantize_block(const float* in, int64_t at) {
    const __m512 first = _mm512_loadu_ps(in), second = _mm512_loadu_ps(in + 16);
    const float peak = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(first), _mm512_abs_ps(second)));
    const float dx = peak / 127.f, inverse = peak > 0.f ? 127.f / peak : 0.f;
    const __m512 scale = _mm512_set1_ps(inverse);
    constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512i low = _mm512_cvt_roundps_epi32(_mm512_mul_ps(first, scale), kNearest);
    const __m512i high = _mm512_cvt_roundps_epi32(_mm512_mul_ps(second, scale), kNearest);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q.data() + at), _mm512_cvtsepi32_epi8(low));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q.data() + at + 16), _mm512_cvtsepi32_epi8(high));
    const float sum_low = static_cast<float>(_mm512_reduce_add_epi32(low));
    const float sum_high = static_cast<float>(_mm512_reduce_add_epi32(high));
    const int64_t b = at / kBlock;
    scale32[b] = scale16[2 * b] = scale16[2 * b + 1] = dx;
    sums16[2 * b] = dx * sum_low;
    sums16[2 * b + 1] = dx * sum_high;
    sums32[b] = dx * (sum_low + sum_high);
  }
#endif
  const int8_t* values(int64_t r) const { return q.data() + r * kp; }
  const float* scales(int64_t r, int64_t sub) const {
    return sub == 16 ? scale16.data() + r * kp / 16 : scale32.data() + r * kp / kBlock;
  }
  const float* sums(int64_t r, int64_t sub) const {
    return sub == 16 ? sums16.data() + r * kp / 16 : sums32.data() + r * kp / kBlock;
  }
};

template <int64_t kType>
constexpr bool is_k_type = kType == kQ2_K || kType == kQ3_K || kType == kQ4_K || kType == kQ5_K || kType == kQ6_K;
template <int64_t kType>
constexpr int64_t sub_size = (kType == kQ2_K || kType == kQ3_K || kType == kQ6_K) ? 16 : 32;

// ------------------------------------------------------------------------------------------------ vector decode
#if defined(QWQ_GGUF_VNNI)
constexpr int kUnitWeights = 64;  // weights in one vector of u values

inline __m512i low_nibbles(__m512i v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0F)); }
inline __m512i high_nibbles(__m512i v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F)); }
inline __m512i load64(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline __m512i with_bits(__m512i u, const uint8_t* bits, int value) {  // u += value where the plane's bit is set
  const __mmask64 mask = _load_mask64(reinterpret_cast<__mmask64*>(const_cast<uint8_t*>(bits)));
  return _mm512_mask_add_epi8(u, mask, u, _mm512_set1_epi8(static_cast<char>(value)));
}
inline __m512i both_halves(const uint8_t* p) {  // the 32 bytes at p, in each half of the vector
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512i counts(int low, int high) {  // per 16-bit lane shift counts: `low` in the first half, `high` in the second
  return _mm512_inserti64x4(_mm512_set1_epi16(static_cast<short>(low)), _mm256_set1_epi16(static_cast<short>(high)), 1);
}
template <int kCount>
inline __m512 halves16(const uint8_t* p) {  // kCount float16 values at p as float32 lanes, the others zero
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << kCount) - 1), p));
}

// The units (kChunks * 2 vectors of 64 weights) of 128-weight chunks c..c+kChunks-1, and a, b of their
// sub-blocks as vectors (lane j = sub-block j; a K super-block is two chunks, c even).
template <int64_t kType, int kChunks>
inline void units(const Row& w, int64_t c, __m512i* u, __m512& a, __m512& b) {
  if constexpr (kType == kQ4_0 || kType == kQ4_1 || kType == kQ5_0 || kType == kQ5_1) {
    constexpr bool five = kType == kQ5_0 || kType == kQ5_1;
    for (int i = 0; i < kChunks; ++i) {
      const __m512i v = load64(w.p[0] + (c + i) * 64);
      u[2 * i] = low_nibbles(v);
      u[2 * i + 1] = high_nibbles(v);
      if constexpr (five) {
        u[2 * i] = with_bits(u[2 * i], w.p[1] + (c + i) * 16, 16);
        u[2 * i + 1] = with_bits(u[2 * i + 1], w.p[1] + (c + i) * 16 + 8, 16);
      }
    }
    constexpr int plane = five ? 2 : 1;
    a = halves16<4 * kChunks>(w.p[plane] + c * 8);
    if constexpr (kType == kQ4_0 || kType == kQ5_0) {
      b = _mm512_mul_ps(a, _mm512_set1_ps(kType == kQ4_0 ? -8.f : -16.f));
    } else {
      b = halves16<4 * kChunks>(w.p[plane + 1] + c * 8);
    }
  } else if constexpr (kType == kQ8_0) {  // u = q + 128 (dpbusd multiplies unsigned bytes), b = -128 d
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int v = 0; v < 2 * kChunks; ++v) u[v] = _mm512_xor_si512(load64(w.p[0] + c * 128 + 64 * v), flip);
    a = halves16<4 * kChunks>(w.p[1] + c * 8);
    b = _mm512_mul_ps(a, _mm512_set1_ps(-128.f));
  } else if constexpr (kType == kQ4_K || kType == kQ5_K) {
    static_assert(kChunks == 2);
    const int64_t s = c / 2;
    for (int i = 0; i < 2; ++i) {
      const __m512i v = load64(w.p[0] + s * 128 + 64 * i);
      u[2 * i] = low_nibbles(v);
      u[2 * i + 1] = high_nibbles(v);
    }
    if constexpr (kType == kQ5_K) {
      for (int v = 0; v < 4; ++v) u[v] = with_bits(u[v], w.p[1] + s * 32 + 8 * v, 16);
    }
    const uint8_t* head = w.p[kType == kQ4_K ? 1 : 2] + s * 20;
    const __m512 values = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(head + 4))));
    uint32_t d_dmin;
    std::memcpy(&d_dmin, head, 4);
    // float16 d and -dmin (the sign bit flipped: exact), each spread over eight lanes
    const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(d_dmin ^ 0x80000000u)));
    const __m512 spread = _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                                _mm512_castps128_ps512(d));
    a = _mm512_mul_ps(values, spread);  // lanes 0-7: a = d sc, 8-15: b = -dmin m (see b_in_upper_lanes)
    b = a;
  } else if constexpr (kType == kQ6_K) {
    static_assert(kChunks == 2);
    const int64_t s = c / 2;
    const __m512i mask = _mm512_set1_epi8(0x30);
    const __m512i high = load64(w.p[1] + s * 64);
    // unit v's high bits shifted to bits 4-5 (the other bits masked by the ternary logic: u = low | (high & 0x30))
    const __m512i shifted[4] = {_mm512_slli_epi16(high, 4), _mm512_slli_epi16(high, 2), high, _mm512_srli_epi16(high, 2)};
    for (int h = 0; h < 2; ++h) {
      const __m512i v = load64(w.p[0] + s * 128 + 64 * h);
      u[2 * h] = _mm512_ternarylogic_epi32(low_nibbles(v), shifted[2 * h], mask, 0xF8);
      u[2 * h + 1] = _mm512_ternarylogic_epi32(high_nibbles(v), shifted[2 * h + 1], mask, 0xF8);
    }
    const uint8_t* tail = w.p[2] + s * 18;
    a = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tail)))),
                      _mm512_set1_ps(f16(tail + 16)));
    b = _mm512_mul_ps(a, _mm512_set1_ps(-32.f));
  } else if constexpr (kType == kQ2_K || kType == kQ3_K) {
    static_assert(kChunks == 2);
    const int64_t s = c / 2;
    const __m512i three = _mm512_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m512i qs = both_halves(w.p[0] + s * 64 + 32 * h);
      u[2 * h] = _mm512_and_si512(_mm512_srlv_epi16(qs, counts(0, 2)), three);
      u[2 * h + 1] = _mm512_and_si512(_mm512_srlv_epi16(qs, counts(4, 6)), three);
    }
    if constexpr (kType == kQ2_K) {
      const uint8_t* head = w.p[1] + s * 20;
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(head));
      const __m128i low = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
      const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
      a = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low)), _mm512_set1_ps(f16(head + 16)));
      b = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high)), _mm512_set1_ps(-f16(head + 18)));
    } else {
      const __m512i hm = both_halves(w.p[1] + s * 32);
      for (int v = 0; v < 4; ++v) {
        const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << (2 * v))),
                                               _mm256_set1_epi8(static_cast<char>(1 << (2 * v + 1))), 1);
        u[v] = _mm512_mask_add_epi8(u[v], _mm512_test_epi8_mask(hm, bit), u[v], _mm512_set1_epi8(4));
      }
      const uint8_t* tail = w.p[2] + s * 18;
      a = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tail)))),
                        _mm512_set1_ps(f16(tail + 16)));
      b = _mm512_mul_ps(a, _mm512_set1_ps(-4.f));
    }
  }
}

// Q4_K / Q5_K give a and b in one vector: a in lanes 0-7, b in lanes 8-15
template <int64_t kType>
constexpr bool b_in_upper_lanes = kType == kQ4_K || kType == kQ5_K;

template <int kCount>
inline __m512 load_floats(const float* p) {  // kCount floats at p in the first lanes, the others zero
  if constexpr (kCount == 4) return _mm512_zextps128_ps512(_mm_loadu_ps(p));
  if constexpr (kCount == 8) return _mm512_zextps256_ps512(_mm256_loadu_ps(p));
  if constexpr (kCount == 16) return _mm512_loadu_ps(p);
}

// lane l of unit v's integer dot sums weights 4l..4l+3: the (sub-block) value it is scaled by, of kSub-weight
// sub-blocks numbered from the step's first
template <int64_t kSub>
inline __m512 spread(__m512 per_sub, int v) {
  const int first = v * kUnitWeights / kSub;
  const __m512i index = kSub == 32 ? _mm512_set_epi32(first + 1, first + 1, first + 1, first + 1, first + 1, first + 1,
                                                       first + 1, first + 1, first, first, first, first, first, first, first,
                                                       first)
                                   : _mm512_set_epi32(first + 3, first + 3, first + 3, first + 3, first + 2, first + 2,
                                                       first + 2, first + 2, first + 1, first + 1, first + 1, first + 1,
                                                       first, first, first, first);
  return _mm512_permutexvar_ps(index, per_sub);
}
#endif

#if defined(QWQ_GGUF_AVX2)
constexpr int kUnitWeights = 32;

inline float reduce(__m256 v) {
  __m128 low = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  low = _mm_add_ps(low, _mm_movehl_ps(low, low));
  return _mm_cvtss_f32(_mm_add_ss(low, _mm_movehdup_ps(low)));
}
inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i low_nibbles(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
inline __m256i high_nibbles(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F)); }
// bytes of `value` where the 32 bits at p are set
inline __m256i spread_bits(const uint8_t* p, int value) {
  int32_t word;
  std::memcpy(&word, p, 4);
  const __m256i which = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3,
                                         3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(word), which);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(static_cast<char>(value)));
}

// The super-block's units (super / 32 vectors of 32 weights); Q8_0's are its signed weights.
template <int64_t kType>
inline void units(const Row& w, int64_t s, __m256i* u) {
  if constexpr (kType == kQ8_0) {
    for (int v = 0; v < 4; ++v) u[v] = load32(w.p[0] + s * 128 + 32 * v);
  } else if constexpr (kType == kQ4_0 || kType == kQ4_1 || kType == kQ5_0 || kType == kQ5_1 || kType == kQ4_K ||
                       kType == kQ5_K) {
    constexpr int chunks = (kType == kQ4_K || kType == kQ5_K) ? 2 : 1;
    for (int c = 0; c < chunks; ++c) {
      const __m256i first = load32(w.p[0] + s * 64 * chunks + 64 * c), second = load32(w.p[0] + s * 64 * chunks + 64 * c + 32);
      u[4 * c] = low_nibbles(first);
      u[4 * c + 1] = low_nibbles(second);
      u[4 * c + 2] = high_nibbles(first);
      u[4 * c + 3] = high_nibbles(second);
    }
    if constexpr (kType == kQ5_0 || kType == kQ5_1 || kType == kQ5_K) {
      for (int v = 0; v < 4 * chunks; ++v) u[v] = _mm256_or_si256(u[v], spread_bits(w.p[1] + s * 16 * chunks + 4 * v, 16));
    }
  } else if constexpr (kType == kQ6_K) {
    const __m256i mask = _mm256_set1_epi8(0x30);
    const __m256i high[2] = {load32(w.p[1] + s * 64), load32(w.p[1] + s * 64 + 32)};  // weights 64v + 0..31, 64v + 32..63
    auto bits45 = [&](int q) {  // the high bits of vector q (weights 32q..32q+31) in bits 4-5
      const __m256i h = high[q % 2];
      const int v = q / 2;
      const __m256i placed = v == 0 ? _mm256_slli_epi16(h, 4) : v == 1 ? _mm256_slli_epi16(h, 2) : v == 2 ? h : _mm256_srli_epi16(h, 2);
      return _mm256_and_si256(placed, mask);
    };
    for (int h = 0; h < 2; ++h) {
      const __m256i first = load32(w.p[0] + s * 128 + 64 * h), second = load32(w.p[0] + s * 128 + 64 * h + 32);
      u[4 * h] = _mm256_or_si256(low_nibbles(first), bits45(4 * h));
      u[4 * h + 1] = _mm256_or_si256(low_nibbles(second), bits45(4 * h + 1));
      u[4 * h + 2] = _mm256_or_si256(high_nibbles(first), bits45(4 * h + 2));
      u[4 * h + 3] = _mm256_or_si256(high_nibbles(second), bits45(4 * h + 3));
    }
  } else if constexpr (kType == kQ2_K || kType == kQ3_K) {
    const __m256i three = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i qs = load32(w.p[0] + s * 64 + 32 * h);
      u[4 * h] = _mm256_and_si256(qs, three);
      u[4 * h + 1] = _mm256_and_si256(_mm256_srli_epi16(qs, 2), three);
      u[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16(qs, 4), three);
      u[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16(qs, 6), three);
    }
    if constexpr (kType == kQ3_K) {
      const __m256i hm = load32(w.p[1] + s * 32);
      for (int v = 0; v < 8; ++v) {
        const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << v));
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit);
        u[v] = _mm256_or_si256(u[v], _mm256_and_si256(set, _mm256_set1_epi8(4)));
      }
    }
  }
}
#endif

// ------------------------------------------------------------------------------------------------ products
inline void prefetch_planes(const Format& f, const Row& w, int64_t c, int chunks) {
  for (int i = 0; i < f.planes; ++i) {
    const int64_t bytes = f.plane_bytes[i] * 128 / f.super, start = c * bytes, length = chunks * bytes;
    const uint8_t* p = w.p[i] + start;
    if (length >= 64) {
      for (int64_t line = 0; line < length; line += 64) prefetch(p + line + kAhead);
    } else if (reinterpret_cast<uintptr_t>(p) % 64 < static_cast<uintptr_t>(length)) {
      prefetch(p + kAhead);  // once per cache line of a small plane
    }
  }
}

#if defined(QWQ_GGUF_VNNI)
// prefetching a plane's bytes of the step ahead (the small planes are left to the hardware's prefetcher)
template <int64_t kType, int kChunks, int kPlane>
inline void prefetch_plane(const Row& w, int64_t c) {
  constexpr Format f = kFormats[format_index(kType)];
  if constexpr (kPlane < f.planes) {
    constexpr int64_t bytes = f.plane_bytes[kPlane] * 128 / f.super;
    if constexpr (kChunks * bytes >= 64) {
      for (int64_t line = 0; line < kChunks * bytes; line += 64) prefetch(w.p[kPlane] + c * bytes + line + kAhead);
    }
  }
}

// out[i] = the sum of v[i]'s lanes, for 16 vectors (v[i] at v + i * stride): a transpose-and-add, each vector's
// lanes added in the same order whatever the others hold
inline __m512 lane_sums(const __m512* v, int stride) {
  __m512 p[8], q[4];
  for (int j = 0; j < 8; ++j) {  // quarters 0-1: vector 2j's halves added, 2-3: vector 2j + 1's
    const __m512 a = v[2 * j * stride], b = v[(2 * j + 1) * stride];
    p[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int j = 0; j < 4; ++j)  // quarter t: four partial sums of vector 4j + t
    q[j] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * j], p[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(p[2 * j], p[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  // within each quarter t: two partial sums of vectors t, 4 + t (first), 8 + t, 12 + t (second)
  const __m512 first = _mm512_add_ps(_mm512_shuffle_ps(q[0], q[1], _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(q[0], q[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 second = _mm512_add_ps(_mm512_shuffle_ps(q[2], q[3], _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(q[2], q[3], _MM_SHUFFLE(3, 2, 3, 2)));
  // lane 4t + s: the sum of vector 4s + t
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(first, second, _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_ps(first, second, _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), sums);
}

// chunks c..c+kChunks-1 of the weight row against R activation rows: per sub-block j,
// acc += cvt(dot(u, xq)) * a_j * dx_j over its lanes, offsets_j += b_j * dx_j * sum(xq_j)
template <int64_t kType, int R, int kChunks>
inline void step(const Row& w, int64_t c, const int8_t* const* xq, const float* const* dx, const float* const* xsum,
                 __m512 (*acc)[R], __m512* offsets) {
  constexpr int64_t kSub = sub_size<kType>;
  constexpr int kSubs = kChunks * 128 / kSub;
  prefetch_plane<kType, kChunks, 0>(w, c);
  prefetch_plane<kType, kChunks, 1>(w, c);
  prefetch_plane<kType, kChunks, 2>(w, c);
  __m512i u[2 * kChunks];
  __m512 a, b;
  units<kType, kChunks>(w, c, u, a, b);
  const int64_t first_sub = c * 128 / kSub;
  for (int r = 0; r < R; ++r) {
    const __m512 scale = _mm512_mul_ps(a, load_floats<kSubs>(dx[r] + first_sub));  // b's lanes, if any, times 0
    if constexpr (b_in_upper_lanes<kType>) {  // the sums into lanes 8-15 (the lanes below masked: never read)
      offsets[r] = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(0xFF00, xsum[r] + first_sub - 8), offsets[r]);
    } else {
      offsets[r] = _mm512_fmadd_ps(b, load_floats<kSubs>(xsum[r] + first_sub), offsets[r]);
    }
    for (int v = 0; v < 2 * kChunks; ++v) {
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[v], _mm512_loadu_si512(xq[r] + c * 128 + 64 * v));
      acc[v & 1][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), spread<kSub>(scale, v), acc[v & 1][r]);
    }
  }
}
#endif

#if defined(QWQ_GGUF_VNNI)
using Total = __m512;  // a dot product's partial sums, added up 16 rows at a time (lane_sums)
#else
using Total = float;
#endif

// out[r] = weight row `w` . activation row r0 + r, for R rows at once (the weight row decoded once for all);
// `chunks` 128-weight chunks a row
template <int64_t kType, int R>
void dot_rows(const Row& w, int64_t chunks, const Activations& x, int64_t r0, Total* out) {
  constexpr int64_t kSuper = is_k_type<kType> ? 256 : 128;
  constexpr int64_t kSub = sub_size<kType>;
  constexpr int kSubs = kSuper / kSub;
  const int64_t supers = chunks * 128 / kSuper;
  const int8_t* xq[R];
  const float* xsum[R];
  for (int r = 0; r < R; ++r) {
    xq[r] = x.values(r0 + r);
    xsum[r] = x.sums(r0 + r, kSub);
  }
#if defined(QWQ_GGUF_VNNI)
  (void)supers;
  const float* dx[R];
  for (int r = 0; r < R; ++r) dx[r] = x.scales(r0 + r, kSub);
  __m512 acc[2][R], offsets[R];
  for (int r = 0; r < R; ++r) acc[0][r] = acc[1][r] = offsets[r] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 2 <= chunks; c += 2) step<kType, R, 2>(w, c, xq, dx, xsum, acc, offsets);
  if constexpr (!is_k_type<kType>) {
    if (c < chunks) step<kType, R, 1>(w, c, xq, dx, xsum, acc, offsets);
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]), offsets[r]);
#elif defined(QWQ_GGUF_AVX2)
  constexpr const Format& f = format<kType>;
  constexpr int kUnits = kSuper / kUnitWeights;
  const float* dx[R];
  for (int r = 0; r < R; ++r) dx[r] = x.scales(r0 + r, 32);
  __m256 acc[2][R], offsets[R];
  for (int r = 0; r < R; ++r) acc[0][r] = acc[1][r] = offsets[r] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t s = 0; s < supers; ++s) {
    prefetch_planes(f, w, s * kSuper / 128, kSuper / 128);
    __m256i u[kUnits];
    units<kType>(w, s, u);
    alignas(32) float a[16], b[16];
    decode_scales(kType, w, s, a, b);
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < kSubs; j += 8) {
        if (kSubs - j >= 8) {
          offsets[r] = _mm256_fmadd_ps(_mm256_load_ps(b + j), _mm256_loadu_ps(xsum[r] + s * kSubs + j), offsets[r]);
        } else {
          const __m128 sum = _mm_mul_ps(_mm_load_ps(b + j), _mm_loadu_ps(xsum[r] + s * kSubs + j));
          offsets[r] = _mm256_add_ps(offsets[r], _mm256_zextps128_ps256(sum));
        }
      }
    }
    for (int v = 0; v < kUnits; ++v) {
      const int64_t e = s * kSuper + v * kUnitWeights;
      const __m256 scale = kSub == 32 ? _mm256_set1_ps(a[v]) : _mm256_setr_m128(_mm_set1_ps(a[2 * v]), _mm_set1_ps(a[2 * v + 1]));
      for (int r = 0; r < R; ++r) {
        const __m256i xv = load32(reinterpret_cast<const uint8_t*>(xq[r] + e));
        __m256i dot;
        if constexpr (kType == kQ8_0) {  // signed weights: |w| times x with w's sign
          dot = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(u[v], u[v]), _mm256_sign_epi8(xv, u[v])), ones);
        } else {
          dot = _mm256_madd_epi16(_mm256_maddubs_epi16(u[v], xv), ones);
        }
        acc[v & 1][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(scale, _mm256_set1_ps(dx[r][e / kBlock])),
                                        acc[v & 1][r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) out[r] = reduce(_mm256_add_ps(_mm256_add_ps(acc[0][r], acc[1][r]), offsets[r]));
#else
  const float* dx[R];
  for (int r = 0; r < R; ++r) dx[r] = x.scales(r0 + r, 32);
  float total[R] = {0.f};
  for (int64_t s = 0; s < supers; ++s) {
    uint8_t u[256];
    float a[16], b[16];
    decode_values(kType, w, s, u);
    decode_scales(kType, w, s, a, b);
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < kSubs; ++j) {
        const int64_t e = s * kSuper + j * kSub;
        int32_t dot = 0;
        for (int64_t i = 0; i < kSub; ++i) {
          const int32_t value = kType == kQ8_0 ? int32_t(static_cast<int8_t>(u[j * kSub + i])) : int32_t(u[j * kSub + i]);
          dot += value * int32_t(xq[r][e + i]);
        }
        total[r] += a[j] * dx[r][e / kBlock] * static_cast<float>(dot) + b[j] * xsum[r][s * kSubs + j];
      }
    }
  }
  for (int r = 0; r < R; ++r) out[r] = total[r];
#endif
}

// A matrix given to the kernels: its type, input size and planes (each [N, bytes per row], uint8).
struct Part {
  int64_t type, n, k;
  const Format* format;
  std::vector<const uint8_t*> base;
  std::vector<int64_t> row_bytes;

  Row row(int64_t i) const {
    Row w{};
    for (int p = 0; p < format->planes; ++p) w.p[p] = base[p] + i * row_bytes[p];
    return w;
  }
};

Part check_part(int64_t type, int64_t k, const std::vector<torch::Tensor>& planes) {
  const Format& f = format_of(type);
  TORCH_CHECK(k > 0 && k % f.block == 0, "a GGUF ", type, " row needs a multiple of ", f.block, " weights, got ", k);
  TORCH_CHECK(static_cast<int>(planes.size()) == f.planes, "GGUF type ", type, " has ", f.planes, " planes, got ",
              planes.size());
  Part part{type, planes[0].size(0), k, &f, {}, {}};
  const int64_t supers = padded(k, f) / f.super;
  for (int p = 0; p < f.planes; ++p) {
    const torch::Tensor& plane = planes[p];
    TORCH_CHECK(plane.scalar_type() == torch::kUInt8 && plane.dim() == 2 && plane.is_contiguous() && plane.device().is_cpu(),
                "GGUF planes must be contiguous uint8 CPU matrices");
    TORCH_CHECK(plane.size(0) == part.n && plane.size(1) == supers * f.plane_bytes[p], "GGUF plane ", p, " is ",
                plane.sizes(), ", expected [", part.n, ", ", supers * f.plane_bytes[p], "]");
    part.base.push_back(plane.data_ptr<uint8_t>());
    part.row_bytes.push_back(plane.size(1));
  }
  return part;
}

template <int64_t kType>
void rows_product(const Part& part, const Activations& x, int64_t begin, int64_t end, float* y, int64_t ldy, int64_t col) {
  const int64_t chunks = padded(part.k, *part.format) / 128;
  constexpr int kGroup = 16;  // weight rows whose totals are added up together
  Total totals[kGroup][kTile];
  for (int64_t first = begin; first < end; first += kGroup) {
    const int64_t count = std::min<int64_t>(kGroup, end - first);
    for (int64_t r0 = 0; r0 < x.m; r0 += kTile) {  // the group's rows stay in cache for every tile of activations
      const int64_t rows = std::min<int64_t>(kTile, x.m - r0);
      for (int64_t i = 0; i < count; ++i) {
        const Row w = part.row(first + i);
        switch (rows) {
          case 1: dot_rows<kType, 1>(w, chunks, x, r0, totals[i]); break;
          case 2: dot_rows<kType, 2>(w, chunks, x, r0, totals[i]); break;
          case 3: dot_rows<kType, 3>(w, chunks, x, r0, totals[i]); break;
          default: dot_rows<kType, 4>(w, chunks, x, r0, totals[i]); break;
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* out = y + (r0 + r) * ldy + col + first;
#if defined(QWQ_GGUF_VNNI)
        for (int64_t i = count; i < kGroup; ++i) totals[i][r] = _mm512_setzero_ps();
        _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << count) - 1), lane_sums(&totals[0][r], kTile));
#else
        for (int64_t i = 0; i < count; ++i) out[i] = totals[i][r];
#endif
      }
    }
  }
}

void product(const Part& part, const Activations& x, int64_t begin, int64_t end, float* y, int64_t ldy, int64_t col) {
  switch (part.type) {
    case kQ4_0: return rows_product<kQ4_0>(part, x, begin, end, y, ldy, col);
    case kQ4_1: return rows_product<kQ4_1>(part, x, begin, end, y, ldy, col);
    case kQ5_0: return rows_product<kQ5_0>(part, x, begin, end, y, ldy, col);
    case kQ5_1: return rows_product<kQ5_1>(part, x, begin, end, y, ldy, col);
    case kQ8_0: return rows_product<kQ8_0>(part, x, begin, end, y, ldy, col);
    case kQ2_K: return rows_product<kQ2_K>(part, x, begin, end, y, ldy, col);
    case kQ3_K: return rows_product<kQ3_K>(part, x, begin, end, y, ldy, col);
    case kQ4_K: return rows_product<kQ4_K>(part, x, begin, end, y, ldy, col);
    case kQ5_K: return rows_product<kQ5_K>(part, x, begin, end, y, ldy, col);
    case kQ6_K: return rows_product<kQ6_K>(part, x, begin, end, y, ldy, col);
  }
}

// ------------------------------------------------------------------------------------------------ dequantization
template <typename Out>
void store(const float* values, int64_t count, Out* dst) {
  if constexpr (std::is_same_v<Out, float>) {
    std::memcpy(dst, values, count * sizeof(float));
  } else {
    int64_t i = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    for (; i + 32 <= count; i += 32) {
      const __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(values + i + 16), _mm512_loadu_ps(values + i));
      _mm512_storeu_si512(dst + i, reinterpret_cast<const __m512i&>(pair));
    }
#endif
    for (; i < count; ++i) dst[i] = Out(values[i]);  // rounded to nearest even, as torch converts
  }
}

// Row i of the part as `count` (= k) values w = a * u + b.
template <typename Out>
void dequantize_row(const Part& part, int64_t i, Out* dst) {
  const Format& f = *part.format;
  const int64_t supers = padded(part.k, f) / f.super;
  const Row w = part.row(i);
  alignas(64) float values[256];
  for (int64_t s = 0; s < supers; ++s) {
    uint8_t u[256];
    float a[16], b[16];
    decode_values(part.type, w, s, u);
    decode_scales(part.type, w, s, a, b);
    const bool is_signed = part.type == kQ8_0;
    for (int64_t j = 0; j < f.super / f.sub; ++j) {
      const float scale = a[j], low = b[j];
      for (int64_t t = 0; t < f.sub; ++t) {
        const int64_t index = j * f.sub + t;
        const float q = is_signed ? static_cast<float>(static_cast<int8_t>(u[index])) : static_cast<float>(u[index]);
        values[index] = q * scale + low;  // q * scale is exact: one rounding, as gguf's dequantization
      }
    }
    const int64_t start = s * f.super, count = std::min(f.super, part.k - start);
    if (count > 0) store(values, count, dst + start);
  }
}

#if defined(QWQ_GGUF_VNNI)
// Chunks c..c+kChunks-1 of a row as a * u + b, 16 values at a time (a * u exact: one rounding, as gguf's), stored
// as float32 or bfloat16 (rounded to nearest even, as torch converts)
template <int64_t kType, int kChunks, typename Out>
inline void dequantize_step(const Row& w, int64_t c, int64_t k, Out* dst) {
  constexpr int64_t kSub = sub_size<kType>;
  __m512i u[2 * kChunks];
  __m512 a, b;
  units<kType, kChunks>(w, c, u, a, b);
  for (int v = 0; v < 2 * kChunks; ++v) {
    for (int g = 0; g < 4; ++g) {
      const int64_t index = c * 128 + 64 * v + 16 * g;
      if (index >= k) return;  // the zero weights padding a row of a 32-weight type
      const int j = (64 * v + 16 * g) / kSub;
      const __m512 scale = _mm512_permutexvar_ps(_mm512_set1_epi32(j), a);
      const __m512 low = _mm512_permutexvar_ps(_mm512_set1_epi32(b_in_upper_lanes<kType> ? j + 8 : j), b);
      __m128i bytes;
      switch (g) {  // the extract's lane must be a constant
        case 0: bytes = _mm512_extracti32x4_epi32(u[v], 0); break;
        case 1: bytes = _mm512_extracti32x4_epi32(u[v], 1); break;
        case 2: bytes = _mm512_extracti32x4_epi32(u[v], 2); break;
        default: bytes = _mm512_extracti32x4_epi32(u[v], 3); break;
      }
      const __m512 values = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), scale, low);
      if constexpr (std::is_same_v<Out, float>) {
        _mm512_storeu_ps(dst + index, values);
      } else {
#if defined(__AVX512BF16__)
        const __m256bh half = _mm512_cvtneps_pbh(values);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + index), reinterpret_cast<const __m256i&>(half));
#else
        alignas(64) float spill[16];
        _mm512_store_ps(spill, values);
        store(spill, 16, dst + index);
#endif
      }
    }
  }
}

template <int64_t kType, typename Out>
void dequantize_row_vector(const Part& part, int64_t i, Out* dst) {
  const Row w = part.row(i);
  const int64_t chunks = padded(part.k, *part.format) / 128;
  int64_t c = 0;
  for (; c + 2 <= chunks; c += 2) dequantize_step<kType, 2>(w, c, part.k, dst);
  if constexpr (!is_k_type<kType>) {
    if (c < chunks) dequantize_step<kType, 1>(w, c, part.k, dst);
  }
}
#endif

template <typename Out>
void dequantize_rows(const Part& part, const int64_t* rows, int64_t count, Out* y) {
#if defined(QWQ_GGUF_VNNI)
  auto row = [&](int64_t i, Out* dst) {
    switch (part.type) {
      case kQ4_0: return dequantize_row_vector<kQ4_0>(part, i, dst);
      case kQ4_1: return dequantize_row_vector<kQ4_1>(part, i, dst);
      case kQ5_0: return dequantize_row_vector<kQ5_0>(part, i, dst);
      case kQ5_1: return dequantize_row_vector<kQ5_1>(part, i, dst);
      case kQ8_0: return dequantize_row_vector<kQ8_0>(part, i, dst);
      case kQ2_K: return dequantize_row_vector<kQ2_K>(part, i, dst);
      case kQ3_K: return dequantize_row_vector<kQ3_K>(part, i, dst);
      case kQ4_K: return dequantize_row_vector<kQ4_K>(part, i, dst);
      case kQ5_K: return dequantize_row_vector<kQ5_K>(part, i, dst);
      case kQ6_K: return dequantize_row_vector<kQ6_K>(part, i, dst);
    }
  };
#else
  auto row = [&](int64_t i, Out* dst) { dequantize_row(part, i, dst); };
#endif
  at::parallel_for(0, count, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row(rows[r], y + r * part.k);
  });
}

torch::Tensor dequantize_impl(const Part& part, const torch::Tensor& rows, bool bfloat16) {
  auto out = torch::empty({rows.numel(), part.k}, bfloat16 ? torch::kBFloat16 : torch::kFloat32);
  const int64_t* index = rows.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows.numel(); ++r)
    TORCH_CHECK(0 <= index[r] && index[r] < part.n, "row ", index[r], " is not in the matrix's ", part.n);
  if (bfloat16) {
    dequantize_rows(part, index, rows.numel(), out.data_ptr<at::BFloat16>());
  } else {
    dequantize_rows(part, index, rows.numel(), out.data_ptr<float>());
  }
  return out;
}

}  // namespace

// Bytes per row of each plane of a [N, k] tensor of this type.
std::vector<int64_t> gguf_plane_widths(int64_t type, int64_t k) {
  const Format& f = format_of(type);
  TORCH_CHECK(k > 0 && k % f.block == 0, "a GGUF ", type, " row needs a multiple of ", f.block, " weights, got ", k);
  std::vector<int64_t> widths;
  for (int p = 0; p < f.planes; ++p) widths.push_back(padded(k, f) / f.super * f.plane_bytes[p]);
  return widths;
}

// Rows of the file's blocks (raw [rows, bytes per row]) packed into rows [first, first + rows) of the planes.
void gguf_pack(const torch::Tensor& raw, int64_t type, int64_t k, const std::vector<torch::Tensor>& planes, int64_t first) {
  const Format& f = format_of(type);
  const Part part = check_part(type, k, planes);
  TORCH_CHECK(raw.scalar_type() == torch::kUInt8 && raw.dim() == 2 && raw.is_contiguous(), "raw blocks must be uint8 rows");
  TORCH_CHECK(raw.size(1) == k / f.block * f.block_bytes, "a row of ", k, " weights of type ", type, " is ",
              k / f.block * f.block_bytes, " bytes, got ", raw.size(1));
  TORCH_CHECK(0 <= first && first + raw.size(0) <= part.n, "rows ", first, "..", first + raw.size(0), " are not in the planes");
  const uint8_t* in = raw.data_ptr<uint8_t>();
  at::parallel_for(0, raw.size(0), 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      uint8_t* out[kMaxPlanes];
      for (int p = 0; p < f.planes; ++p) out[p] = const_cast<uint8_t*>(part.base[p]) + (first + r) * part.row_bytes[p];
      pack_row(type, in + r * raw.size(1), k, out);
    }
  });
}

// Rows [begin, end) of the matrix as float32 or bfloat16: the prompt path's dense GEMM operand.
torch::Tensor gguf_dequantize(int64_t type, int64_t k, const std::vector<torch::Tensor>& planes, int64_t begin, int64_t end,
                              bool bfloat16) {
  const Part part = check_part(type, k, planes);
  TORCH_CHECK(0 <= begin && begin <= end && end <= part.n, "rows ", begin, "..", end, " are not in the matrix");
  return dequantize_impl(part, torch::arange(begin, end, torch::kInt64), bfloat16);
}

// The rows named by `ids` (an embedding lookup) as float32 or bfloat16.
torch::Tensor gguf_rows(int64_t type, int64_t k, const std::vector<torch::Tensor>& planes, const torch::Tensor& ids,
                        bool bfloat16) {
  const Part part = check_part(type, k, planes);
  TORCH_CHECK(ids.scalar_type() == torch::kInt64, "row ids must be int64");
  return dequantize_impl(part, ids.contiguous().view({-1}), bfloat16);
}

// x (M, k) float32 @ the parts' rows one after another (+ bias) -> (M, sum of the parts' N) float32.
torch::Tensor gguf_matmul(const torch::Tensor& x, const std::vector<int64_t>& types, int64_t k,
                          const std::vector<std::vector<torch::Tensor>>& planes, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous() && x.size(1) == k,
              "activations must be a contiguous float32 matrix of width ", k);
  TORCH_CHECK(!types.empty() && types.size() == planes.size(), "one type per part expected");
  std::vector<Part> parts;
  std::vector<int64_t> starts{0};
  for (size_t i = 0; i < types.size(); ++i) {
    parts.push_back(check_part(types[i], k, planes[i]));
    starts.push_back(starts.back() + parts.back().n);
  }
  const int64_t n = starts.back(), m = x.size(0);
  const float* add = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() && bias->numel() == n, "bias must be ", n,
                " contiguous float32 values");
    add = bias->data_ptr<float>();
  }
  const Activations quantized(x.data_ptr<float>(), m, k);
  auto out = torch::empty({m, n}, x.options());
  float* y = out.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (size_t p = 0; p < parts.size(); ++p) {
      const int64_t first = std::max(begin, starts[p]), last = std::min(end, starts[p + 1]);
      if (first < last) product(parts[p], quantized, first - starts[p], last - starts[p], y, n, starts[p]);
    }
    if (add != nullptr)
      for (int64_t r = 0; r < m; ++r)
        for (int64_t i = begin; i < end; ++i) y[r * n + i] += add[i];
  });
  return out;
}

void register_gguf_kernels(pybind11::module& module) {
  module.def("gguf_plane_widths", &gguf_plane_widths, "bytes per row of each plane of a GGUF matrix of this type",
             py::arg("type"), py::arg("k"));
  module.def("gguf_pack", &gguf_pack, "rows of a GGUF tensor's blocks packed into the kernels' planes", py::arg("raw"),
             py::arg("type"), py::arg("k"), py::arg("planes"), py::arg("first"));
  module.def("gguf_dequantize", &gguf_dequantize, "rows [begin, end) of a packed GGUF matrix as float32 or bfloat16",
             py::arg("type"), py::arg("k"), py::arg("planes"), py::arg("begin"), py::arg("end"), py::arg("bfloat16") = false);
  module.def("gguf_rows", &gguf_rows, "the rows named by ids of a packed GGUF matrix as float32 or bfloat16",
             py::arg("type"), py::arg("k"), py::arg("planes"), py::arg("ids"), py::arg("bfloat16") = false);
  module.def("gguf_matmul", &gguf_matmul, "x (M, K) float32 @ packed GGUF parts (+ bias) -> (M, N) float32", py::arg("x"),
             py::arg("types"), py::arg("k"), py::arg("planes"), py::arg("bias") = py::none());
}
