// The retrained AIM's folded forward (aim/models/aim.py, ``FoldedAIM``), loaded by aim/layers/native.py through
// ctypes: per row, each field's folded row is found once (a code's row of its table, or the pooled row of a
// multi-valued field), its MLP numbers are copied to the MLP's input, and the logit is the constant plus every
// term's product of factors read from those rows (first-order weights are terms of one factor).
//
// Why: in torch the same work is a gather per field, copies of each field's columns into two arrays, and per order
// p gathers of p column sets, a product and a row sum: 1.9 ms for ml-100k's 10,000 test rows, where DeepFM's
// embedding, FM and first-order terms take 1.2 (bench/inference_parts.py). Here nothing but the MLP's input is
// written, and the folded tables (a few hundred kB there) stay in cache.
#include <cstdint>
#include <vector>

extern "C" {

// tables: every field's folded table, flattened one after another; table_start[f] is where field f's starts and
// width[f] its row length. codes [batch, n_single] (int32): field f (single-valued) reads column code_column[f];
// a multi-valued field (code_column[f] < 0) reads row b of its pooled [batch, width[f]] array at address pooled[f].
// The first mlp_size[f] numbers of field f's row go to mlp_in[b, mlp_column[f] ...]. Terms come in groups: group g
// has counts[g] terms of orders[g] factors each; factor i is number factor_column[i] of field factor_field[i]'s row.
void aim_folded_logits(const float* tables, const int64_t* table_start, const int64_t* width,
                       const int64_t* mlp_size, const int64_t* mlp_column, const int32_t* codes, int64_t n_single,
                       const int64_t* code_column, const int64_t* pooled, int64_t batch, int64_t fields,
                       int64_t mlp_width, const int64_t* orders, const int64_t* counts, int64_t groups,
                       const int32_t* factor_field, const int32_t* factor_column, float constant, int threads,
                       float* mlp_in, float* logits) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<const float*> row(fields);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      float* mlp = mlp_in + b * mlp_width;
      for (int64_t f = 0; f < fields; ++f) {
        const float* r = code_column[f] >= 0
                             ? tables + table_start[f] + static_cast<int64_t>(codes[b * n_single + code_column[f]]) * width[f]
                             : reinterpret_cast<const float*>(pooled[f]) + b * width[f];
        row[f] = r;
        float* out = mlp + mlp_column[f];
        for (int64_t j = 0; j < mlp_size[f]; ++j) out[j] = r[j];
      }
      float logit = constant;
      int64_t i = 0;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t p = orders[g];
        for (int64_t t = 0; t < counts[g]; ++t, i += p) {
          float product = row[factor_field[i]][factor_column[i]];
          for (int64_t s = 1; s < p; ++s) product *= row[factor_field[i + s]][factor_column[i + s]];
          logit += product;
        }
      }
      logits[b] = logit;
    }
  }
}

}  // extern "C"
