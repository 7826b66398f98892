// Channel normalization of x viewed as (outer, C, inner): LayerNorm over C at every
// (outer, inner) position, or GroupNorm with one group over (C, inner) per outer index; then
// the per-channel weight and bias.
#include "common.cuh"

// Rows of C contiguous channels (inner == 1, tokens): one warp per row.
template <typename T>
__device__ void ln_rows(int rows, int c, float eps, const T* x, const T* w, const T* b, T* y) {
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* src = x + (size_t)row * c;
  float s = 0.f;
  for (int i = lane; i < c; i += 32) s += to_f(src[i]);
  const float mean = warp_sum(s) / c;
  float v = 0.f;
  for (int i = lane; i < c; i += 32) {
    const float d = to_f(src[i]) - mean;
    v += d * d;
  }
  const float inv = 1.f / sqrtf(warp_sum(v) / c + eps);
  for (int i = lane; i < c; i += 32)
    y[(size_t)row * c + i] = from_f<T>((to_f(src[i]) - mean) * inv * to_f(w[i]) + to_f(b[i]));
}

// Channels strided by inner (NCHW maps): one thread per (outer, inner) position, Welford over C.
template <typename T>
__device__ void ln_strided(int outer, int c, int inner, float eps, const T* x, const T* w,
                           const T* b, T* y) {
  GRID_STRIDE(i, (size_t)outer * inner) {
    const size_t base = (i / inner) * (size_t)c * inner + i % inner;
    float mean = 0.f, m2 = 0.f;
    for (int ch = 0; ch < c; ++ch) {
      const float v = to_f(x[base + (size_t)ch * inner]), d = v - mean;
      mean += d / (ch + 1);
      m2 += d * (v - mean);
    }
    const float inv = 1.f / sqrtf(m2 / c + eps);
    for (int ch = 0; ch < c; ++ch) {
      const size_t at = base + (size_t)ch * inner;
      y[at] = from_f<T>((to_f(x[at]) - mean) * inv * to_f(w[ch]) + to_f(b[ch]));
    }
  }
}

// GroupNorm1 statistics: grid (blocks, outer); sums of (x - pivot) and its square, pivot the
// sample's first element, accumulated in double into acc[2 * o], acc[2 * o + 1].
template <typename T> __device__ void gn_stats(size_t per, const T* x, double* acc) {
  const T* src = x + blockIdx.y * per;
  const float pivot = to_f(src[0]);
  float s = 0.f, s2 = 0.f;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < per;
       i += (size_t)gridDim.x * blockDim.x) {
    const float d = to_f(src[i]) - pivot;
    s += d;
    s2 += d * d;
  }
  s = block_sum(s);
  s2 = block_sum(s2);
  if (threadIdx.x == 0) {
    atomicAdd(acc + 2 * blockIdx.y, (double)s);
    atomicAdd(acc + 2 * blockIdx.y + 1, (double)s2);
  }
}

template <typename T>
__device__ void gn_apply(int outer, int c, int inner, float eps, const double* acc, const T* x,
                         const T* w, const T* b, T* y) {
  const size_t per = (size_t)c * inner;
  GRID_STRIDE(i, (size_t)outer * per) {
    const size_t o = i / per;
    const int ch = (i % per) / inner;
    const double m1 = acc[2 * o] / per, var = acc[2 * o + 1] / per - m1 * m1;
    const float mean = (float)m1 + to_f(x[o * per]);
    const float inv = (float)(1.0 / sqrt(fmax(var, 0.0) + eps));
    y[i] = from_f<T>((to_f(x[i]) - mean) * inv * to_f(w[ch]) + to_f(b[ch]));
  }
}

#define NORM(S, T)                                                                             \
  extern "C" __global__ void ln_rows_##S(int rows, int c, float eps, const T* x, const T* w,   \
                                         const T* b, T* y) {                                   \
    ln_rows<T>(rows, c, eps, x, w, b, y);                                                      \
  }                                                                                            \
  extern "C" __global__ void ln_strided_##S(int outer, int c, int inner, float eps, const T* x, \
                                            const T* w, const T* b, T* y) {                    \
    ln_strided<T>(outer, c, inner, eps, x, w, b, y);                                           \
  }                                                                                            \
  extern "C" __global__ void gn_stats_##S(size_t per, const T* x, double* acc) {               \
    gn_stats<T>(per, x, acc);                                                                  \
  }                                                                                            \
  extern "C" __global__ void gn_apply_##S(int outer, int c, int inner, float eps,             \
                                          const double* acc, const T* x, const T* w,           \
                                          const T* b, T* y) {                                  \
    gn_apply<T>(outer, c, inner, eps, acc, x, w, b, y);                                        \
  }
FOR_EACH_DTYPE(NORM)
