// Vector helpers for the per-ISA CPU kernels (included only by files in
// TCE_CPU_KERNEL_SOURCES, which are compiled with CPU_CAPABILITY set): loads
// and stores of accumulator vectors from any of the four float dtypes, exp,
// and the online (max, sum-of-exp) update of softmax and logsumexp.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace vec_io {

using at::vec::Vectorized;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
constexpr bool kIsReduced = !(std::is_same_v<T, float> || std::is_same_v<T, double>);

// Loads and stores of one accumulator-width vector from T memory (Half and
// BFloat16 are widened to float on load and narrowed on store).
template <typename T>
struct IO {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  static constexpr int64_t L = V::size();
  // A 16-bit load reads L elements (half a register) and widens them in one
  // instruction or two: at::vec's masked full-register load and two-half
  // conversion took twice the instructions, and embedding_bag's bfloat16 row
  // sums are bound by them (20000x96, 4096 bags of 32: 0.55x -> 0.78x F.embedding_bag).
  static V load(const T* p) {
    if constexpr (kIsReduced<T>) {
#if defined(CPU_CAPABILITY_AVX512)
      return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(CPU_CAPABILITY_AVX2)
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      } else {
        return _mm256_cvtph_ps(h);
      }
#else
      return std::get<0>(at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, L)));
#endif
    } else {
      return V::loadu(p);
    }
  }
  // Loads count <= L elements, the other lanes 0: one masked load on AVX512
  // (at::vec's loadu(p, count)), a copy through the stack elsewhere. The tails
  // of odd widths and the narrow COLS tiles go through it, so a width of 33
  // costs three vector loads a row, not 33 scalar ones.
  static V load_count(const T* p, int64_t count) {
    if constexpr (kIsReduced<T>) {
#if defined(CPU_CAPABILITY_AVX512)
      return widen(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1), p));
#else
      return std::get<0>(at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, count)));
#endif
    } else {
      return V::loadu(p, count);
    }
  }
  // Loads count < L elements; the other lanes hold `fill`.
  static V load_part(const T* p, int64_t count, A fill) {
    const V v = load_count(p, count);
    if (fill == A(0)) return v;
    return V::blendv(V(fill), v, V::arange(0, 1) < V(static_cast<A>(count)));
  }
  // A 16-bit store narrows one float vector into half a register and stores
  // that: at::vec's convert_from_float narrows two (here the same one twice)
  // and stores through a full-register mask. fused_linear's bfloat16 relu
  // epilogue (512x4096) took 1.0 ms that way, F.relu 0.34 ms.
  static void store(T* p, const V& v) {
    if constexpr (kIsReduced<T>) {
#if defined(CPU_CAPABILITY_AVX512)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v));
#else
      at::vec::convert_from_float<T>(v, v).store(p, L);
#endif
    } else {
      v.store(p);
    }
  }
  // Stores the first count <= L lanes (a masked store on AVX512).
  static void store_part(T* p, const V& v, int64_t count) {
    if constexpr (kIsReduced<T>) {
#if defined(CPU_CAPABILITY_AVX512)
      _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << count) - 1), narrow(v));
#else
      at::vec::convert_from_float<T>(v, v).store(p, count);
#endif
    } else {
      v.store(p, count);
    }
  }
#if defined(CPU_CAPABILITY_AVX512)
  // L 16-bit values (half a register) -> float.
  static V widen(__m256i h) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
  // float -> T, rounded to nearest even (NaN stays NaN), as at::vec rounds.
  static __m256i narrow(const V& v) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      return at::vec::cvtfp32_bf16(v);
    } else {
      return at::vec::cvtfp32_fp16(v);
    }
  }
#endif
};

template <typename A>
inline Vectorized<A> vexp(const Vectorized<A>& v) {
  return v.exp_u20();
}

// exp that keeps NaN NaN (exp_u20 of NaN is not NaN): one compare and one blend more.
template <typename A>
inline Vectorized<A> vexp_nan(const Vectorized<A>& v) {
  return Vectorized<A>::blendv(v.exp_u20(), v, v != v);
}

// Online update of lane-wise (max, sum) with the lane-wise max `bm` of a block
// whose exponentials (relative to the new max) are added by `add_exps`.
// Lanes whose max is still -inf hold sum 0 (exp(-inf - -inf) would be NaN).
template <typename A, typename AddExps>
inline void online_update(Vectorized<A>& m, Vectorized<A>& s, const Vectorized<A>& bm, AddExps add_exps) {
  using V = Vectorized<A>;
  const V ninf(-std::numeric_limits<A>::infinity());
  const V m_new = at::vec::maximum(m, bm);
  const V dead = m_new == ninf;
  const V alpha = V::blendv(vexp(m - m_new), V(0), dead);
  s = s * alpha + V::blendv(add_exps(m_new), V(0), dead);
  m = m_new;
}

// Outputs past this size cannot stay in the caches for the next op: the row
// kernels then stream them to memory (non-temporal stores, no read-for-
// ownership: a third less DRAM traffic for a write-once output).
constexpr int64_t kStreamBytes = 32LL << 20;

// Non-temporal store of a float32 vector at a vector-aligned address: the line
// goes to memory without first being read into the cache (no read-for-
// ownership), a third less DRAM traffic for an output too big to stay cached.
template <typename T, typename V>
inline bool stream_store(T* p, const V& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    _mm512_stream_ps(p, v);
    return true;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_stream_ps(p, v);
    return true;
  }
#endif
  return false;
}

// Writes out[0..n) = value(i, count) vector by vector (count < L only at the
// edges). With stream, the body between the first and last vector-aligned
// addresses uses non-temporal stores.
template <typename T, typename F>
inline void write_vectors(T* out, int64_t n, bool stream, F value) {
  constexpr int64_t L = IO<T>::L;
  int64_t i = 0;
  if (stream) {
    const auto misalign = reinterpret_cast<std::uintptr_t>(out) % (L * sizeof(T));
    const int64_t head = misalign == 0 ? 0 : std::min<int64_t>(n, (L * sizeof(T) - misalign) / sizeof(T));
    if (head > 0) IO<T>::store_part(out, value(0, head), head);
    for (i = head; i + L <= n; i += L) {
      const auto v = value(i, L);
      if (!stream_store(out + i, v)) IO<T>::store(out + i, v);
    }
  }
  for (; i + L <= n; i += L) IO<T>::store(out + i, value(i, L));
  if (i < n) IO<T>::store_part(out + i, value(i, n - i), n - i);
}

// ---- tiles of up to kTile contiguous elements per row (COLS kernels) --------
// A tile of `width` <= kTile elements is K vectors per row, the last one
// masked to its `tail` lanes. K is a template parameter so that the tile's
// accumulators live in registers; with_tile picks it from the width and calls
// f(std::integral_constant<int, K>). A narrow or odd width (7, 33, 300 =
// 4 x 64 + 44 columns) is then the same vector loop as a full tile:
// logsumexp over dim 0 of (4096, 33) float32 took 1380 us through a scalar
// double loop (0.13x torch), reduce_max 215 us (0.41x).
template <typename T, int64_t kTile, int K = 1, typename F>
inline void with_tile(int64_t width, F f) {
  constexpr int64_t L = IO<T>::L;
  if constexpr (K < static_cast<int>(kTile / L)) {
    if (width > K * L) return with_tile<T, kTile, K + 1>(width, f);
  }
  f(std::integral_constant<int, K>{});
}

// Vector j of a tile row: the last of the K holds `tail` lanes (the others 0).
template <typename T, int K>
inline Vectorized<acc_t<T>> tile_load(const T* row, int j, int64_t tail) {
  constexpr int64_t L = IO<T>::L;
  return (j + 1 < K || tail == L) ? IO<T>::load(row + j * L) : IO<T>::load_count(row + j * L, tail);
}

template <typename T, int K>
inline void tile_store(T* row, int j, int64_t tail, const Vectorized<acc_t<T>>& v) {
  constexpr int64_t L = IO<T>::L;
  if (j + 1 < K || tail == L) {
    IO<T>::store(row + j * L, v);
  } else {
    IO<T>::store_part(row + j * L, v, tail);
  }
}

// Loads count (<= L) elements; missing lanes are 0.
template <typename T>
inline Vectorized<acc_t<T>> load_n(const T* p, int64_t count) {
  return count == IO<T>::L ? IO<T>::load(p) : IO<T>::load_part(p, count, 0);
}

inline void stream_fence(bool stream) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if (stream) _mm_sfence();  // streaming stores are visible to other threads after this
#endif
}

}  // namespace vec_io
}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext
