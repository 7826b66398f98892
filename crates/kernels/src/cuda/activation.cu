// Element-wise activations: exact (erf) GELU and StarReLU, forward and input gradient.
#include "common.cuh"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

template <typename T> __device__ void gelu_fwd(size_t n, const T* x, T* y) {
  GRID_STRIDE(i, n) {
    const float v = to_f(x[i]);
    y[i] = from_f<T>(0.5f * v * (1.f + erff(v * INV_SQRT2)));
  }
}

template <typename T> __device__ void gelu_bwd(size_t n, const T* x, const T* g, T* dx) {
  GRID_STRIDE(i, n) {
    const float v = to_f(x[i]);
    const float d = 0.5f * (1.f + erff(v * INV_SQRT2)) + v * INV_SQRT_2PI * expf(-0.5f * v * v);
    dx[i] = from_f<T>(to_f(g[i]) * d);
  }
}

template <typename T>
__device__ void star_relu_fwd(size_t n, const T* x, const T* scale, const T* bias, T* y) {
  const float s = to_f(scale[0]), b = to_f(bias[0]);
  GRID_STRIDE(i, n) {
    const float r = fmaxf(to_f(x[i]), 0.f);
    y[i] = from_f<T>(s * r * r + b);
  }
}

template <typename T>
__device__ void star_relu_bwd(size_t n, const T* x, const T* g, const T* scale, T* dx) {
  const float s2 = 2.f * to_f(scale[0]);
  GRID_STRIDE(i, n) { dx[i] = from_f<T>(to_f(g[i]) * s2 * fmaxf(to_f(x[i]), 0.f)); }
}

#define ACTIVATIONS(S, T)                                                                      \
  extern "C" __global__ void gelu_fwd_##S(size_t n, const T* x, T* y) { gelu_fwd<T>(n, x, y); } \
  extern "C" __global__ void gelu_bwd_##S(size_t n, const T* x, const T* g, T* dx) {          \
    gelu_bwd<T>(n, x, g, dx);                                                                  \
  }                                                                                            \
  extern "C" __global__ void star_relu_fwd_##S(size_t n, const T* x, const T* s, const T* b,  \
                                               T* y) {                                        \
    star_relu_fwd<T>(n, x, s, b, y);                                                           \
  }                                                                                            \
  extern "C" __global__ void star_relu_bwd_##S(size_t n, const T* x, const T* g, const T* s,  \
                                               T* dx) {                                       \
    star_relu_bwd<T>(n, x, g, s, dx);                                                          \
  }
FOR_EACH_DTYPE(ACTIVATIONS)
