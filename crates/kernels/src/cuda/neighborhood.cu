// Sliding-window ("neighbourhood") attention of TransNeXt (see src/neighborhood.rs): logits
// q[n] . k[n + off_j] (`pad` where the neighbour is outside the map), the aggregate
// sum_j w[n, j] v[n + off_j], and its transpose sum_j w[m - off_j, j] v[m - off_j] (the
// gradients). Operands are (planes, H * W, d) row-major; f32 accumulation.
#include "common.cuh"

struct Nbhd {
  int planes, h, w, d, win;
};

// One thread per (token, neighbour) logit.
template <typename T>
__device__ void nbhd_logits(Nbhd g, float pad, const T* q, const T* k, T* out) {
  const int taps = g.win * g.win, r = g.win / 2;
  const size_t n = (size_t)g.h * g.w;
  GRID_STRIDE(i, (size_t)g.planes * n * taps) {
    const int j = i % taps;
    const size_t tok = i / taps;
    const int t = tok % n;
    const size_t plane = tok / n;
    const int y = t / g.w + j / g.win - r, x = t % g.w + j % g.win - r;
    float acc = pad;
    if (y >= 0 && y < g.h && x >= 0 && x < g.w) {
      const T* a = q + tok * g.d;
      const T* b = k + (plane * n + (size_t)y * g.w + x) * g.d;
      acc = 0.f;
      for (int c = 0; c < g.d; ++c) acc += to_f(a[c]) * to_f(b[c]);
    }
    out[i] = from_f<T>(acc);
  }
}

// One thread per (token, channel) output. Gather: source s = n + off_j weighed by w[n, j];
// transposed: source s = n - off_j weighed by w[s, j].
template <typename T, bool TRANSPOSED>
__device__ void nbhd_aggregate(Nbhd g, const T* wts, const T* src, T* out) {
  const int taps = g.win * g.win, r = g.win / 2;
  const size_t n = (size_t)g.h * g.w;
  GRID_STRIDE(i, (size_t)g.planes * n * g.d) {
    const int c = i % g.d;
    const size_t tok = i / g.d;
    const int t = tok % n;
    const size_t plane = tok / n;
    const int y0 = t / g.w, x0 = t % g.w;
    float acc = 0.f;
    for (int a = 0; a < g.win; ++a) {
      const int y = TRANSPOSED ? y0 + r - a : y0 + a - r;
      if (y < 0 || y >= g.h) continue;
      for (int b = 0; b < g.win; ++b) {
        const int x = TRANSPOSED ? x0 + r - b : x0 + b - r;
        if (x < 0 || x >= g.w) continue;
        const size_t s = plane * n + (size_t)y * g.w + x;
        const float wv = to_f(wts[(TRANSPOSED ? s : tok) * taps + a * g.win + b]);
        acc += wv * to_f(src[s * g.d + c]);
      }
    }
    out[i] = from_f<T>(acc);
  }
}

#define NBHD(S, T)                                                                          \
  extern "C" __global__ void nbhd_logits_##S(Nbhd g, float pad, const T* q, const T* k,     \
                                             T* out) {                                      \
    nbhd_logits<T>(g, pad, q, k, out);                                                      \
  }                                                                                         \
  extern "C" __global__ void nbhd_aggregate_##S(Nbhd g, float pad, const T* w, const T* v,  \
                                                T* out) {                                   \
    nbhd_aggregate<T, false>(g, w, v, out);                                                 \
  }                                                                                         \
  extern "C" __global__ void nbhd_aggregate_transposed_##S(Nbhd g, float pad, const T* w,   \
                                                           const T* v, T* out) {            \
    nbhd_aggregate<T, true>(g, w, v, out);                                                  \
  }
FOR_EACH_DTYPE(NBHD)
