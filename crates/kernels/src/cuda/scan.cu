// Mamba's selective scan s_l = exp(delta_l A) s_{l-1} + delta_l B_l u_l, y_l = <s_l, C_l>:
// one thread per (batch, channel) holding its state (at most MAXN) in registers, sequential
// over L. ud is (2, B, D, L) (u then delta), a (D, N), bc (2, B, L, N) (B then C), y (B, D, L).
#include "common.cuh"

struct Scan {
  int b, d, l, n;
};

template <typename T, int MAXN>
__device__ void scan_fwd(Scan g, const T* ud, const T* a, const T* bc, T* y) {
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= g.b * g.d) return;
  const int bi = row / g.d, di = row % g.d;
  const size_t bdl = (size_t)g.b * g.d * g.l, bln = (size_t)g.b * g.l * g.n;
  const T* u = ud + (size_t)row * g.l;
  const T* delta = u + bdl;
  const T* bm = bc + (size_t)bi * g.l * g.n;
  const T* cm = bm + bln;
  float av[MAXN], s[MAXN];
#pragma unroll
  for (int k = 0; k < MAXN; ++k) {
    av[k] = k < g.n ? to_f(a[di * g.n + k]) : 0.f;
    s[k] = 0.f;
  }
  for (int t = 0; t < g.l; ++t) {
    const float dt = to_f(delta[t]), du = dt * to_f(u[t]);
    const T* bt = bm + (size_t)t * g.n;
    const T* ct = cm + (size_t)t * g.n;
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < MAXN; ++k) {
      if (k < g.n) {
        s[k] = expf(dt * av[k]) * s[k] + du * to_f(bt[k]);
        acc += s[k] * to_f(ct[k]);
      }
    }
    y[(size_t)row * g.l + t] = from_f<T>(acc);
  }
}

#define SCAN_N(S, T, N)                                                                        \
  extern "C" __global__ void scan_fwd_n##N##_##S(Scan g, const T* ud, const T* a, const T* bc, \
                                                 T* y) {                                       \
    scan_fwd<T, N>(g, ud, a, bc, y);                                                           \
  }
#define SCAN(S, T) SCAN_N(S, T, 16) SCAN_N(S, T, 32) SCAN_N(S, T, 64)
FOR_EACH_DTYPE(SCAN)
