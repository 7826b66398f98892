// One-level 2-D Haar transform of channel-last maps in WaveMix's channel order, and its adjoint
// (see src/wavelet.rs): one thread per channel of each 2x2 block, odd sizes zero-padded.
#include "common.cuh"

struct Haar {
  int b, h, w, c;
};

// (a, b, c, d) of a 2x2 block to (LL, top-bottom, left-right, diagonal); its own inverse.
__device__ __forceinline__ void butterfly(float a, float b, float c, float d, float* o) {
  const float s0 = a + b, s1 = c + d, d0 = a - b, d1 = c - d;
  o[0] = 0.5f * (s0 + s1);
  o[1] = 0.5f * (s0 - s1);
  o[2] = 0.5f * (d0 + d1);
  o[3] = 0.5f * (d0 - d1);
}

template <typename T>
__device__ void haar_dwt_fwd(Haar g, const T* x, T* y) {
  const int ho = (g.h + 1) / 2, wo = (g.w + 1) / 2;
  GRID_STRIDE(i, (size_t)g.b * ho * wo * g.c) {
    const int ch = i % g.c;
    const size_t pix = i / g.c;
    const int ox = pix % wo, oy = (pix / wo) % ho;
    const size_t image = pix / ((size_t)wo * ho);
    float v[4];
    for (int k = 0; k < 4; ++k) {
      const int iy = 2 * oy + k / 2, ix = 2 * ox + k % 2;
      v[k] = (iy < g.h && ix < g.w)
                 ? to_f(x[((image * g.h + iy) * g.w + ix) * g.c + ch])
                 : 0.f;
    }
    float o[4];
    butterfly(v[0], v[1], v[2], v[3], o);
    T* out = y + pix * 4 * g.c;
    out[ch] = from_f<T>(o[0]);
    for (int k = 1; k < 4; ++k) out[g.c + 3 * ch + k - 1] = from_f<T>(o[k]);
  }
}

template <typename T>
__device__ void haar_dwt_adjoint(Haar g, const T* coeffs, T* x) {
  const int ho = (g.h + 1) / 2, wo = (g.w + 1) / 2;
  GRID_STRIDE(i, (size_t)g.b * ho * wo * g.c) {
    const int ch = i % g.c;
    const size_t pix = i / g.c;
    const int ox = pix % wo, oy = (pix / wo) % ho;
    const size_t image = pix / ((size_t)wo * ho);
    const T* in = coeffs + pix * 4 * g.c;
    float o[4];
    butterfly(to_f(in[ch]), to_f(in[g.c + 3 * ch]), to_f(in[g.c + 3 * ch + 1]),
              to_f(in[g.c + 3 * ch + 2]), o);
    for (int k = 0; k < 4; ++k) {
      const int iy = 2 * oy + k / 2, ix = 2 * ox + k % 2;
      if (iy < g.h && ix < g.w) x[((image * g.h + iy) * g.w + ix) * g.c + ch] = from_f<T>(o[k]);
    }
  }
}

#define HAAR(S, T)                                                                        \
  extern "C" __global__ void haar_dwt_fwd_##S(Haar g, const T* x, T* y) {                 \
    haar_dwt_fwd<T>(g, x, y);                                                             \
  }                                                                                       \
  extern "C" __global__ void haar_dwt_adjoint_##S(Haar g, const T* c, T* x) {             \
    haar_dwt_adjoint<T>(g, c, x);                                                         \
  }
FOR_EACH_DTYPE(HAAR)
