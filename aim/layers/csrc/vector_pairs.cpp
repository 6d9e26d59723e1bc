// The vector kernel of every pair of fields, forward and backward, on CPU: the order-2 search's costliest function.
//
//   out[b, k] = sum_x e[b, i, x] e[b, j, x] K[k, x]   for every pair k = (i, j), i < j, in row-major pair order.
//
// The torch version (interaction.py, _AllPairsVectorKernel) loops over the fields in Python: about 400 small ops a
// batch, forward and backward, 30 % of a search step for 8M multiply-adds. Here a row is done at a time, in cache:
// its embeddings transposed to [d, n], and the kernel (shared by all rows) transposed once to [d, m], so that for a
// field i and a position x the pairs (i, j > i) are one contiguous run of both, and the loops over j vectorise.
// Plain C++ with no torch headers, called through ctypes (aim/layers/native.py builds it).
//
// Determinism: rows are independent in the forward and in the gradient of the embeddings. The kernel's gradient is
// summed per group of rows (at most 64 groups, fixed by the batch size alone), each group in row order into a slot
// of its own, then the slots in order: the thread count changes no bit.

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kMaxGroups = 64;

inline int64_t groups_of(int64_t B) { return std::max<int64_t>(1, std::min<int64_t>(kMaxGroups, B)); }

// kt[x * m + k] = kernel[k * d + x]
std::vector<float> transposed(const float* kernel, int64_t m, int64_t d) {
  std::vector<float> kt(d * m);
  for (int64_t k = 0; k < m; ++k)
    for (int64_t x = 0; x < d; ++x) kt[x * m + k] = kernel[k * d + x];
  return kt;
}

// et[x * n + i] = e[i * d + x] for one row
inline void transpose_row(const float* e, int64_t n, int64_t d, float* __restrict et) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t x = 0; x < d; ++x) et[x * n + i] = e[i * d + x];
}

void forward(const float* e, const float* kernel, int64_t B, int64_t n, int64_t d, int threads, float* out) {
  const int64_t m = n * (n - 1) / 2;
  const std::vector<float> kt = transposed(kernel, m, d);
  const float* __restrict K = kt.data();
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(d * n);
    float* __restrict et = buffer.data();
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      transpose_row(e + b * n * d, n, d, et);
      float* __restrict o = out + b * m;
      std::fill(o, o + m, 0.0f);
      int64_t start = 0;
      for (int64_t i = 0; i < n - 1; ++i) {
        const int64_t count = n - 1 - i;  // pairs (i, i+1), ..., (i, n-1): o[start .. start + count)
        for (int64_t x = 0; x < d; ++x) {  // the sum over x runs in order for every pair
          const float ei = et[x * n + i];
          const float* __restrict ej = et + x * n + i + 1;
          const float* __restrict kk = K + x * m + start;
#pragma omp simd
          for (int64_t j = 0; j < count; ++j) o[start + j] += ei * ej[j] * kk[j];
        }
        start += count;
      }
    }
  }
}

// grad [B, m] -> grad_e [B, n, d] and grad_kernel [m, d]; slots: groups_of(B) * d * m floats of scratch.
void backward(const float* e, const float* kernel, const float* grad, int64_t B, int64_t n, int64_t d, int threads,
              float* grad_e, float* grad_kernel, float* slots) {
  const int64_t m = n * (n - 1) / 2, groups = groups_of(B);
  const std::vector<float> kt = transposed(kernel, m, d);
  const float* __restrict K = kt.data();
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(2 * d * n + m);
    float* __restrict et = buffer.data();
    float* __restrict get = et + d * n;  // the row's grad_e, transposed
    float* __restrict t = get + d * n;   // g_k K[k, x] for the pairs of one field
#pragma omp for schedule(static)
    for (int64_t q = 0; q < groups; ++q) {
      float* __restrict gk = slots + q * d * m;  // this group's d/dK, transposed: gk[x * m + k]
      std::fill(gk, gk + d * m, 0.0f);
      for (int64_t b = q * B / groups; b < (q + 1) * B / groups; ++b) {
        transpose_row(e + b * n * d, n, d, et);
        std::fill(get, get + d * n, 0.0f);
        const float* __restrict g = grad + b * m;
        int64_t start = 0;
        for (int64_t i = 0; i < n - 1; ++i) {
          const int64_t count = n - 1 - i;
          for (int64_t x = 0; x < d; ++x) {
            const float ei = et[x * n + i];
            const float* __restrict ej = et + x * n + i + 1;
            const float* __restrict kk = K + x * m + start;
            float* __restrict gej = get + x * n + i + 1;
            float* __restrict gkk = gk + x * m + start;
            float gei = 0.0f;
#pragma omp simd reduction(+ : gei)
            for (int64_t j = 0; j < count; ++j) {
              const float gK = g[start + j] * kk[j];
              gei += gK * ej[j];                        // d/de_i = sum_j g_ij K_ij e_j
              gej[j] += gK * ei;                        // d/de_j = g_ij K_ij e_i
              gkk[j] += g[start + j] * ei * ej[j];      // d/dK_ij = sum_b g_ij e_i e_j
            }
            get[x * n + i] += gei;
          }
          start += count;
        }
        float* __restrict ge = grad_e + b * n * d;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t x = 0; x < d; ++x) ge[i * d + x] = get[x * n + i];
      }
    }
  }
  // The groups' sums, added in group order, transposed back to [m, d].
  std::vector<float> total(slots, slots + d * m);
  for (int64_t q = 1; q < groups; ++q) {
    const float* __restrict s = slots + q * d * m;
#pragma omp simd
    for (int64_t idx = 0; idx < d * m; ++idx) total[idx] += s[idx];
  }
  for (int64_t k = 0; k < m; ++k)
    for (int64_t x = 0; x < d; ++x) grad_kernel[k * d + x] = total[x * m + k];
}

}  // namespace

extern "C" {

int64_t aim_vector_pairs_slots(int64_t B, int64_t n, int64_t d) { return groups_of(B) * d * (n * (n - 1) / 2); }

void aim_vector_pairs_forward(const float* e, const float* kernel, int64_t B, int64_t n, int64_t d, int threads,
                              float* out) {
  forward(e, kernel, B, n, d, threads, out);
}

void aim_vector_pairs_backward(const float* e, const float* kernel, const float* grad, int64_t B, int64_t n,
                               int64_t d, int threads, float* grad_e, float* grad_kernel, float* slots) {
  backward(e, kernel, grad, B, n, d, threads, grad_e, grad_kernel, slots);
}

}  // extern "C"
