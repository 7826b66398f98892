// PoolFormer's pooling mixer: avg_pool(k, 1, k/2, count_include_pad=False)(x) - x per plane,
// and its adjoint.
#include "common.cuh"

__device__ __forceinline__ int window_count(int i, int half, int n) {
  return min(i + half, n - 1) - max(i - half, 0) + 1;
}

template <typename T> __device__ void pool_fwd(size_t n, int h, int w, int half, const T* x, T* y) {
  GRID_STRIDE(i, n) {
    const int ox = i % w, oy = (i / w) % h;
    const T* src = x + (i / ((size_t)w * h)) * h * w;
    const int y0 = max(oy - half, 0), y1 = min(oy + half, h - 1);
    const int x0 = max(ox - half, 0), x1 = min(ox + half, w - 1);
    float acc = 0.f;
    for (int yy = y0; yy <= y1; ++yy)
      for (int xx = x0; xx <= x1; ++xx) acc += to_f(src[yy * w + xx]);
    y[i] = from_f<T>(acc / (float)((y1 - y0 + 1) * (x1 - x0 + 1)) - to_f(x[i]));
  }
}

// dx[i] = sum over the window around i of g[j] / count(j), minus g[i] (windows are symmetric).
template <typename T> __device__ void pool_bwd(size_t n, int h, int w, int half, const T* g, T* dx) {
  GRID_STRIDE(i, n) {
    const int ox = i % w, oy = (i / w) % h;
    const T* src = g + (i / ((size_t)w * h)) * h * w;
    float acc = 0.f;
    for (int yy = max(oy - half, 0); yy <= min(oy + half, h - 1); ++yy) {
      const int cy = window_count(yy, half, h);
      for (int xx = max(ox - half, 0); xx <= min(ox + half, w - 1); ++xx)
        acc += to_f(src[yy * w + xx]) / (float)(cy * window_count(xx, half, w));
    }
    dx[i] = from_f<T>(acc - to_f(g[i]));
  }
}

#define POOL(S, T)                                                                             \
  extern "C" __global__ void pool_fwd_##S(size_t n, int h, int w, int half, const T* x, T* y) { \
    pool_fwd<T>(n, h, w, half, x, y);                                                          \
  }                                                                                            \
  extern "C" __global__ void pool_bwd_##S(size_t n, int h, int w, int half, const T* g,        \
                                          T* dx) {                                             \
    pool_bwd<T>(n, h, w, half, g, dx);                                                         \
  }
FOR_EACH_DTYPE(POOL)
