// BatchNorm (training statistics) -> ReLU -> dropout over a [B, H] float32 activation, forward and backward,
// for the hidden layers of DeepFM, IPNN and AIM's MLP on CPU. Loaded by aim/layers/native.py (ctypes, no torch
// headers).
//
// Why: torch runs these as separate ops, each a pass through a [4096, 400] activation (6.5 MB, larger than
// L2): batch norm's statistics and normalisation, the in-place ReLU, the dropout mask made from its random
// words (compare, convert, multiply), and in the backward the dropout and ReLU gradients and batch norm's two
// passes. Here the forward is two passes (column statistics, then y = relu(a * z + c) * keep) and the backward
// two (column sums of g and g * xhat, then dz), where g = dy * scale wherever y > 0 (y > 0 exactly where the
// ReLU let the value through and dropout kept it, so neither a ReLU mask nor a dropout mask is stored).
//
// Determinism: column sums run over the rows in order, each column within one thread (threads split the
// columns), so the result does not depend on the number of threads. Sums are in double.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Columns [begin, end) of thread `part` of `parts`, in whole 16-float (64-byte) pieces.
inline void column_range(int64_t H, int part, int parts, int64_t& begin, int64_t& end) {
  const int64_t pieces = (H + 15) / 16;
  begin = std::min(H, pieces * part / parts * 16);
  end = std::min(H, pieces * (part + 1) / parts * 16);
}

inline int threads_for(int64_t H, int threads) {
  const int64_t pieces = (H + 15) / 16;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, pieces)));
}

}  // namespace

extern "C" {

// z [B, H]; gamma, beta [H]; uniform [B, H] int16 (null: no dropout): kept where uniform >= threshold, then
// scaled by `scale`. Writes y [B, H], and per column the mean, 1 / sqrt(biased var + eps) and the biased var.
void aim_bnrd_forward(const float* z, const float* gamma, const float* beta, const int16_t* uniform,
                      int threshold, float scale, double eps, int64_t B, int64_t H, int threads, float* y,
                      float* mean_out, float* rstd_out, float* var_out) {
  std::vector<float> a(H), c(H);
  const int parts = threads_for(H, threads);
#pragma omp parallel num_threads(parts)
  {
    int64_t h0, h1;
    column_range(H, omp_get_thread_num(), omp_get_num_threads(), h0, h1);
    const int64_t w = h1 - h0;
    std::vector<double> sum(w, 0.0), sumsq(w, 0.0);
    for (int64_t r = 0; r < B; ++r) {
      const float* row = z + r * H + h0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        const double v = row[j];
        sum[j] += v;
        sumsq[j] += v * v;
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      const double mean = sum[j] / B;
      const double var = std::max(sumsq[j] / B - mean * mean, 0.0);
      const double rstd = 1.0 / std::sqrt(var + eps);
      mean_out[h0 + j] = static_cast<float>(mean);
      rstd_out[h0 + j] = static_cast<float>(rstd);
      var_out[h0 + j] = static_cast<float>(var);
      a[h0 + j] = static_cast<float>(gamma[h0 + j] * rstd);  // y = relu(a z + c): the normalisation folded
      c[h0 + j] = static_cast<float>(beta[h0 + j] - mean * gamma[h0 + j] * rstd);
    }
  }
  const float* pa = a.data();
  const float* pc = c.data();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < B; ++r) {
    const float* zr = z + r * H;
    float* yr = y + r * H;
    if (uniform == nullptr) {
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) yr[h] = std::max(pa[h] * zr[h] + pc[h], 0.0f);
    } else {
      const int16_t* ur = uniform + r * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) {
        const float v = std::max(pa[h] * zr[h] + pc[h], 0.0f) * scale;
        yr[h] = ur[h] >= threshold ? v : 0.0f;
      }
    }
  }
}

// dy, y, z [B, H]; mean, rstd, gamma [H]. Writes dz [B, H], dgamma and dbeta [H].
void aim_bnrd_backward(const float* dy, const float* y, const float* z, const float* mean, const float* rstd,
                       const float* gamma, float scale, int64_t B, int64_t H, int threads, float* dz,
                       float* dgamma, float* dbeta) {
  std::vector<float> k(H), m1(H), m2(H);
  const int parts = threads_for(H, threads);
#pragma omp parallel num_threads(parts)
  {
    int64_t h0, h1;
    column_range(H, omp_get_thread_num(), omp_get_num_threads(), h0, h1);
    const int64_t w = h1 - h0;
    std::vector<double> sg(w, 0.0), sgx(w, 0.0);
    const float* mu = mean + h0;
    const float* rs = rstd + h0;
    for (int64_t r = 0; r < B; ++r) {
      const float* dyr = dy + r * H + h0;
      const float* yr = y + r * H + h0;
      const float* zr = z + r * H + h0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        const float g = dyr[j] * (yr[j] > 0.0f ? scale : 0.0f);  // both loads unconditional: vectorised
        sg[j] += g;
        sgx[j] += static_cast<double>(g) * ((zr[j] - mu[j]) * rs[j]);
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      const int64_t h = h0 + j;
      dbeta[h] = static_cast<float>(sg[j]);
      dgamma[h] = static_cast<float>(sgx[j]);
      k[h] = gamma[h] * rstd[h];  // dz = gamma rstd (g - mean(g) - xhat mean(g xhat))
      m1[h] = static_cast<float>(sg[j] / B);
      m2[h] = static_cast<float>(sgx[j] / B);
    }
  }
  const float* pk = k.data();
  const float* p1 = m1.data();
  const float* p2 = m2.data();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < B; ++r) {
    const float* dyr = dy + r * H;
    const float* yr = y + r * H;
    const float* zr = z + r * H;
    float* dzr = dz + r * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const float g = dyr[h] * (yr[h] > 0.0f ? scale : 0.0f);
      const float xhat = (zr[h] - mean[h]) * rstd[h];
      dzr[h] = pk[h] * (g - p1[h] - xhat * p2[h]);
    }
  }
}

}  // extern "C"
