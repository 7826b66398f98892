// Orthonormal 2-D real DFTs and GFNet's global filter as direct DFTs in shared memory: one block
// per (H, W) plane; the row transform (W -> K = W/2 + 1 bins) then the column transform (H),
// and the reverse. O(H W (H + W)) per plane, meant for the small maps of GFNet / AFFNet.
// Dynamic shared memory: the real plane (H W floats, rounded up to even) and two H x K complex
// buffers.
#include "common.cuh"

struct Plane {
  int h, w, k;
};

__device__ __forceinline__ float2 twiddle(int m, int n, float sign) {
  float s, c;
  sincospif(2.f * (float)(m % n) / (float)n, &s, &c);
  return make_float2(c, sign * s);
}

__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

// spec[y][kk] = sum_x plane[y][x] e^{-2 pi i kk x / W}
__device__ void row_dft(Plane g, const float* plane, float2* spec) {
  for (int i = threadIdx.x; i < g.h * g.k; i += blockDim.x) {
    const int y = i / g.k, kk = i % g.k;
    float2 acc = make_float2(0.f, 0.f);
    for (int x = 0; x < g.w; ++x) {
      const float2 t = twiddle(kk * x, g.w, -1.f);
      const float v = plane[y * g.w + x];
      acc.x += v * t.x;
      acc.y += v * t.y;
    }
    spec[i] = acc;
  }
}

// out[ky][kk] = sum_y in[y][kk] e^{sign 2 pi i ky y / H}
__device__ void col_dft(Plane g, const float2* in, float2* out, float sign) {
  for (int i = threadIdx.x; i < g.h * g.k; i += blockDim.x) {
    const int ky = i / g.k, kk = i % g.k;
    float2 acc = make_float2(0.f, 0.f);
    for (int y = 0; y < g.h; ++y) {
      const float2 p = cmul(in[y * g.k + kk], twiddle(ky * y, g.h, sign));
      acc.x += p.x;
      acc.y += p.y;
    }
    out[i] = acc;
  }
}

// plane[y][x] = sum_kk m(kk) Re(spec[y][kk] e^{2 pi i kk x / W}), m = 1 for the zero and
// Nyquist bins (whose imaginary parts drop out) and 2 otherwise.
__device__ void row_idft(Plane g, const float2* spec, float* plane) {
  for (int i = threadIdx.x; i < g.h * g.w; i += blockDim.x) {
    const int y = i / g.w, x = i % g.w;
    float acc = 0.f;
    for (int kk = 0; kk < g.k; ++kk) {
      const float2 t = twiddle(kk * x, g.w, 1.f);
      const float2 v = spec[y * g.k + kk];
      const float m = (kk == 0 || (g.w % 2 == 0 && kk == g.w / 2)) ? 1.f : 2.f;
      acc += m * (v.x * t.x - v.y * t.y);
    }
    plane[i] = acc;
  }
}

struct Buffers {
  float* plane;
  float2* a;
  float2* b;
};

__device__ Buffers buffers(Plane g) {
  extern __shared__ float smem[];
  float2* a = reinterpret_cast<float2*>(smem + ((g.h * g.w + 1) & ~1));
  return Buffers{smem, a, a + g.h * g.k};
}

// Element (y, x) of plane p sits at base(p) + (y W + x) stride, base(p) = (p / stride) H W stride
// + p % stride: stride = C for channel-last maps, 1 for (..., H, W).
template <typename T> __device__ void load_plane(Plane g, int stride, const T* x, float* plane) {
  const size_t base = (blockIdx.x / stride) * (size_t)g.h * g.w * stride + blockIdx.x % stride;
  for (int i = threadIdx.x; i < g.h * g.w; i += blockDim.x) plane[i] = to_f(x[base + (size_t)i * stride]);
}

template <typename T> __device__ void store_plane(Plane g, int stride, const float* plane, T* y) {
  const size_t base = (blockIdx.x / stride) * (size_t)g.h * g.w * stride + blockIdx.x % stride;
  for (int i = threadIdx.x; i < g.h * g.w; i += blockDim.x) y[base + (size_t)i * stride] = from_f<T>(plane[i]);
}

// x, y (B, H, W, C); weight (H, K, C, 2). Block p filters channel p % C of sample p / C.
template <typename T> __device__ void spectral_filter(Plane g, int c, const T* x, const T* wt, T* y) {
  const Buffers s = buffers(g);
  const int ch = blockIdx.x % c;
  const float scale = 1.f / (float)(g.h * g.w);
  load_plane(g, c, x, s.plane);
  __syncthreads();
  row_dft(g, s.plane, s.a);
  __syncthreads();
  col_dft(g, s.a, s.b, -1.f);
  __syncthreads();
  for (int i = threadIdx.x; i < g.h * g.k; i += blockDim.x) {
    const size_t at = ((size_t)i * c + ch) * 2;
    const float2 v = cmul(s.b[i], make_float2(to_f(wt[at]), to_f(wt[at + 1])));
    s.b[i] = make_float2(v.x * scale, v.y * scale);
  }
  __syncthreads();
  col_dft(g, s.b, s.a, 1.f);
  __syncthreads();
  row_idft(g, s.a, s.plane);
  __syncthreads();
  store_plane(g, c, s.plane, y);
}

// x (P, H, W) -> out (2, P, H, K): real parts, then imaginary, scaled by 1 / sqrt(H W).
template <typename T> __device__ void rfft2(Plane g, const T* x, T* out) {
  const Buffers s = buffers(g);
  const float scale = rsqrtf((float)(g.h * g.w));
  const size_t planes = gridDim.x, hk = (size_t)g.h * g.k;
  load_plane(g, 1, x, s.plane);
  __syncthreads();
  row_dft(g, s.plane, s.a);
  __syncthreads();
  col_dft(g, s.a, s.b, -1.f);
  __syncthreads();
  for (int i = threadIdx.x; i < g.h * g.k; i += blockDim.x) {
    out[blockIdx.x * hk + i] = from_f<T>(s.b[i].x * scale);
    out[(planes + blockIdx.x) * hk + i] = from_f<T>(s.b[i].y * scale);
  }
}

// spec (2, P, H, K) -> y (P, H, W), the inverse of rfft2.
template <typename T> __device__ void irfft2(Plane g, const T* spec, T* y) {
  const Buffers s = buffers(g);
  const float scale = rsqrtf((float)(g.h * g.w));
  const size_t planes = gridDim.x, hk = (size_t)g.h * g.k;
  for (int i = threadIdx.x; i < g.h * g.k; i += blockDim.x)
    s.b[i] = make_float2(to_f(spec[blockIdx.x * hk + i]) * scale,
                         to_f(spec[(planes + blockIdx.x) * hk + i]) * scale);
  __syncthreads();
  col_dft(g, s.b, s.a, 1.f);
  __syncthreads();
  row_idft(g, s.a, s.plane);
  __syncthreads();
  store_plane(g, 1, s.plane, y);
}

#define SPECTRAL(S, T)                                                                         \
  extern "C" __global__ void spectral_filter_##S(Plane g, int c, const T* x, const T* w, T* y) { \
    spectral_filter<T>(g, c, x, w, y);                                                         \
  }                                                                                            \
  extern "C" __global__ void rfft2_##S(Plane g, const T* x, T* out) { rfft2<T>(g, x, out); }   \
  extern "C" __global__ void irfft2_##S(Plane g, const T* spec, T* y) { irfft2<T>(g, spec, y); }
FOR_EACH_DTYPE(SPECTRAL)
