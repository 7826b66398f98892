// The Mamba-2 SSD scan of Hydra (see src/ssd.rs): per (batch, head) the state S (P, N) follows
// S_t = exp(ld_t) S_{t-1} + x_t b_t^T (S_{t+1} when reversed) and y_t = S_t c_t. One block per
// (batch, head), one thread per p holding its state row S[p, :] (at most MAXN) in registers;
// b_t and c_t are staged in shared memory each step. x and y are (B, L, H, P), ld (B, L, H),
// bc (B, L, 2, G, N) (b then c); head h reads group h / (H / G). f32 accumulation.
#include "common.cuh"

struct Ssd {
  int b, l, h, p, g, n, reverse;
};

template <typename T, int MAXN>
__device__ void ssd_fwd(Ssd g, const T* x, const T* ld, const T* bc, T* y) {
  __shared__ float sb[MAXN], sc[MAXN];
  const int row = blockIdx.x;
  const int bi = row / g.h, hi = row % g.h;
  const int gi = hi / (g.h / g.g);
  const int pi = threadIdx.x;
  float s[MAXN];
#pragma unroll
  for (int k = 0; k < MAXN; ++k) s[k] = 0.f;
  for (int step = 0; step < g.l; ++step) {
    const int t = g.reverse ? g.l - 1 - step : step;
    const size_t tok = (size_t)bi * g.l + t;
    const T* bt = bc + (tok * 2 * g.g + gi) * g.n;
    const T* ct = bt + (size_t)g.g * g.n;
    __syncthreads();  // the previous step's reads of sb and sc are done
    for (int k = threadIdx.x; k < g.n; k += blockDim.x) {
      sb[k] = to_f(bt[k]);
      sc[k] = to_f(ct[k]);
    }
    __syncthreads();
    if (pi < g.p) {
      const size_t head = tok * g.h + hi;
      const float a = expf(to_f(ld[head]));
      const float xv = to_f(x[head * g.p + pi]);
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < MAXN; ++k) {
        if (k < g.n) {
          s[k] = a * s[k] + xv * sb[k];
          acc += s[k] * sc[k];
        }
      }
      y[head * g.p + pi] = from_f<T>(acc);
    }
  }
}

#define SSD_N(S, T, N)                                                                         \
  extern "C" __global__ void ssd_fwd_n##N##_##S(Ssd g, const T* x, const T* ld, const T* bc,   \
                                                T* y) {                                        \
    ssd_fwd<T, N>(g, x, ld, bc, y);                                                            \
  }
#define SSD(S, T) SSD_N(S, T, 16) SSD_N(S, T, 32) SSD_N(S, T, 64) SSD_N(S, T, 128)
FOR_EACH_DTYPE(SSD)
