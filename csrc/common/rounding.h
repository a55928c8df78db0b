// Rounding a double accumulator to the output dtype exactly once.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/bit_cast.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace teachcompute_ext {

// double -> x's dtype with one rounding. For Half and BFloat16, going through
// float would round twice (1 + 2^-11 + 2^-24 in half gives 1.0, not 1 + 2^-10);
// rounding to float with round-to-odd first makes the second rounding exact.
template <typename scalar_t>
inline scalar_t round_to(double total) {
  if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) {
    float f = static_cast<float>(total);
    if (static_cast<double>(f) != total && std::isfinite(f) && (c10::bit_cast<uint32_t>(f) & 1u) == 0) {
      f = std::nextafter(f, total > static_cast<double>(f) ? INFINITY : -INFINITY);
    }
    return static_cast<scalar_t>(f);
  } else {
    return static_cast<scalar_t>(total);
  }
}

}  // namespace teachcompute_ext
