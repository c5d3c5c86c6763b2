// The two CPU builds of the passes' loops (baseline and AVX-512, run_fastest) and their compile-time
// flags (with_flags): what lets the loops vectorise, with the same bits from either build.
#pragma once
#include <cstdlib>
#include <type_traits>

namespace twoway_fast {

// The passes' loops are compiled twice: for the build's baseline (x86-64-v2: SSE4.2, 4 floats a vector)
// and for AVX-512 (16), the latter run when the CPU has it. run_fastest(f) calls f compiled for the
// best of the two: run_avx512 carries the target and, being flatten, inlines f's loops into itself.
// Both builds give the same bits: no loop reduces across its vector lanes, and setup.py turns off FMA
// contraction (-ffp-contract=off), which only the AVX-512 build could use.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TWOWAY_AVX512_CLONES 1
template <typename F>
__attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512"), flatten))
void run_avx512(const F& f) {
  f();
}

// TWOWAY_FAST_BASELINE_ONLY=1 keeps to the baseline build (tests/test_cpu_builds.py compares the two).
inline bool cpu_has_avx512() {
  static const bool has = std::getenv("TWOWAY_FAST_BASELINE_ONLY") == nullptr &&
                          __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
}
#endif

template <typename F>
inline void run_fastest(const F& f) {
#ifdef TWOWAY_AVX512_CLONES
  if (cpu_has_avx512()) return run_avx512(f);
#endif
  f();
}

// Calls f(std::integral_constant<bool, a>, std::integral_constant<bool, b>, std::integral_constant<bool, c>):
// the passes are compiled per combination of their flags, so their inner loops have no branches
// and vectorise.
template <typename F>
inline void with_flags(bool a, bool b, bool c, F&& f) {
  using Y = std::true_type;
  using N = std::false_type;
  if (a) {
    if (b) c ? f(Y{}, Y{}, Y{}) : f(Y{}, Y{}, N{});
    else c ? f(Y{}, N{}, Y{}) : f(Y{}, N{}, N{});
  } else {
    if (b) c ? f(N{}, Y{}, Y{}) : f(N{}, Y{}, N{});
    else c ? f(N{}, N{}, Y{}) : f(N{}, N{}, N{});
  }
}

}  // namespace twoway_fast
