// Depthwise 2-D convolution (B, C, H, W) x (C, 1, K, K), stride S, zero padding P: forward,
// input gradient and weight gradient.
#include "common.cuh"

struct Conv {
  int b, c, h, w, k, s, p, ho, wo;
};

template <typename T> __device__ void dw_fwd(Conv g, const T* x, const T* wt, T* y) {
  GRID_STRIDE(i, (size_t)g.b * g.c * g.ho * g.wo) {
    const int ox = i % g.wo, oy = (i / g.wo) % g.ho;
    const size_t plane = i / ((size_t)g.wo * g.ho);
    const T* src = x + plane * g.h * g.w;
    const T* kern = wt + (plane % g.c) * g.k * g.k;
    const int iy0 = oy * g.s - g.p, ix0 = ox * g.s - g.p;
    float acc = 0.f;
    for (int ky = 0; ky < g.k; ++ky) {
      const int iy = iy0 + ky;
      if (iy < 0 || iy >= g.h) continue;
      for (int kx = 0; kx < g.k; ++kx) {
        const int ix = ix0 + kx;
        if (ix >= 0 && ix < g.w) acc += to_f(kern[ky * g.k + kx]) * to_f(src[iy * g.w + ix]);
      }
    }
    y[i] = from_f<T>(acc);
  }
}

// Output index along one axis fed by input index `i` through tap `t`, or -1.
__device__ __forceinline__ int fed_by(int i, int t, int s, int p, int out) {
  const int v = i + p - t;
  if (v < 0 || v % s != 0 || v / s >= out) return -1;
  return v / s;
}

template <typename T> __device__ void dw_bwd_input(Conv g, const T* wt, const T* gy, T* gx) {
  GRID_STRIDE(i, (size_t)g.b * g.c * g.h * g.w) {
    const int ix = i % g.w, iy = (i / g.w) % g.h;
    const size_t plane = i / ((size_t)g.w * g.h);
    const T* src = gy + plane * g.ho * g.wo;
    const T* kern = wt + (plane % g.c) * g.k * g.k;
    float acc = 0.f;
    for (int ky = 0; ky < g.k; ++ky) {
      const int oy = fed_by(iy, ky, g.s, g.p, g.ho);
      if (oy < 0) continue;
      for (int kx = 0; kx < g.k; ++kx) {
        const int ox = fed_by(ix, kx, g.s, g.p, g.wo);
        if (ox >= 0) acc += to_f(kern[ky * g.k + kx]) * to_f(src[oy * g.wo + ox]);
      }
    }
    gx[i] = from_f<T>(acc);
  }
}

// One block per (channel, tap): the sum over batch and output positions.
template <typename T> __device__ void dw_bwd_weight(Conv g, const T* x, const T* gy, T* gw) {
  const int tap = blockIdx.x % (g.k * g.k), c = blockIdx.x / (g.k * g.k);
  const int ky = tap / g.k, kx = tap % g.k;
  const size_t per = (size_t)g.ho * g.wo;
  float acc = 0.f;
  for (size_t m = threadIdx.x; m < (size_t)g.b * per; m += blockDim.x) {
    const size_t plane = (m / per) * g.c + c;
    const int r = m % per, oy = r / g.wo, ox = r % g.wo;
    const int iy = oy * g.s - g.p + ky, ix = ox * g.s - g.p + kx;
    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
      acc += to_f(x[plane * g.h * g.w + iy * g.w + ix]) * to_f(gy[plane * per + r]);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) gw[blockIdx.x] = from_f<T>(acc);
}

#define DEPTHWISE(S, T)                                                                        \
  extern "C" __global__ void dw_fwd_##S(Conv g, const T* x, const T* w, T* y) {                \
    dw_fwd<T>(g, x, w, y);                                                                     \
  }                                                                                            \
  extern "C" __global__ void dw_bwd_input_##S(Conv g, const T* w, const T* gy, T* gx) {        \
    dw_bwd_input<T>(g, w, gy, gx);                                                             \
  }                                                                                            \
  extern "C" __global__ void dw_bwd_weight_##S(Conv g, const T* x, const T* gy, T* gw) {       \
    dw_bwd_weight<T>(g, x, gy, gw);                                                            \
  }
FOR_EACH_DTYPE(DEPTHWISE)
