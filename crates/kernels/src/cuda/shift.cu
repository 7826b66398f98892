// MS-MLP's mix-shift on (B, C, H, W): per channel, the depthwise convolution (zero padding K/2)
// of the map rolled by shifts[c] along the width plus that of the map rolled along the height,
// plus both biases. weights (2, C, K, K), biases (2, C); torch.roll: out[i] = in[i - shift].
#include "common.cuh"

struct Shift {
  int b, c, h, w, k;
};

template <typename T>
__device__ void mix_shift_fwd(Shift g, const int* shifts, const T* x, const T* wt, const T* bias,
                              T* y) {
  GRID_STRIDE(i, (size_t)g.b * g.c * g.h * g.w) {
    const int ox = i % g.w, oy = (i / g.w) % g.h;
    const size_t plane = i / ((size_t)g.w * g.h);
    const int c = plane % g.c, s = shifts[c], p = g.k / 2;
    const T* src = x + plane * g.h * g.w;
    const T* lr = wt + (size_t)c * g.k * g.k;
    const T* td = wt + (size_t)(g.c + c) * g.k * g.k;
    float acc = to_f(bias[c]) + to_f(bias[g.c + c]);
    for (int ky = 0; ky < g.k; ++ky) {
      const int ry = oy + ky - p;
      if (ry < 0 || ry >= g.h) continue;
      const int sy = wrap_index(ry - s, g.h);
      for (int kx = 0; kx < g.k; ++kx) {
        const int rx = ox + kx - p;
        if (rx < 0 || rx >= g.w) continue;
        acc += to_f(lr[ky * g.k + kx]) * to_f(src[ry * g.w + wrap_index(rx - s, g.w)]) +
               to_f(td[ky * g.k + kx]) * to_f(src[sy * g.w + rx]);
      }
    }
    y[i] = from_f<T>(acc);
  }
}

#define SHIFT(S, T)                                                                            \
  extern "C" __global__ void mix_shift_fwd_##S(Shift g, const int* shifts, const T* x,         \
                                               const T* w, const T* b, T* y) {                 \
    mix_shift_fwd<T>(g, shifts, x, w, b, y);                                                   \
  }
FOR_EACH_DTYPE(SHIFT)
