// Scalar references of the CPU kernels: plain loops accumulating in long double. They are the
// oracle of the equivalence tests, not a fast path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "wegeft/core/tensor.hpp"

namespace wegeft::reference {

/// g[N, r] = Y[N, d] M[d, r];  G[d, r] += Y^T U[N, r].
template <class T>
void rank_r_pass(T* g, T* G, const T* Y, const T* M, const T* U, Index n, Index d, Index r) {
  for (Index i = 0; i < n; ++i)
    for (Index k = 0; k < r; ++k) {
      long double acc = 0;
      for (Index o = 0; o < d; ++o) acc += static_cast<long double>(Y[i * d + o]) * M[o * r + k];
      g[i * r + k] = static_cast<T>(acc);
    }
  for (Index o = 0; o < d; ++o)
    for (Index k = 0; k < r; ++k) {
      long double acc = 0;
      for (Index i = 0; i < n; ++i) acc += static_cast<long double>(Y[i * d + o]) * U[i * r + k];
      G[o * r + k] += static_cast<T>(acc);
    }
}

/// Y[N, d] = X[N, d] + 1 b^T + U[N, r] Bt[r, d]; X and b may be null. All contiguous.
template <class T>
void rank_r_expand(T* Y, const T* X, const T* b, const T* U, const T* Bt, Index n, Index d,
                   Index r) {
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < d; ++c) {
      long double acc = 0;
      if (X != nullptr) acc += X[i * d + c];
      if (b != nullptr) acc += b[c];
      for (Index k = 0; k < r; ++k) acc += static_cast<long double>(U[i * r + k]) * Bt[k * d + c];
      Y[i * d + c] = static_cast<T>(acc);
    }
}

/// u[N, r] = X[N, d] A[r, d]^T.
template <class T>
void rank_r_project(T* u, const T* X, const T* A, Index n, Index d, Index r) {
  for (Index i = 0; i < n; ++i)
    for (Index k = 0; k < r; ++k) {
      long double acc = 0;
      for (Index c = 0; c < d; ++c) acc += static_cast<long double>(X[i * d + c]) * A[k * d + c];
      u[i * r + k] = static_cast<T>(acc);
    }
}

/// G[r, d] += g[N, r]^T X[N, d].
template <class T>
void rank_r_reduce(T* G, const T* g, const T* X, Index n, Index d, Index r) {
  for (Index k = 0; k < r; ++k)
    for (Index c = 0; c < d; ++c) {
      long double acc = 0;
      for (Index i = 0; i < n; ++i) acc += static_cast<long double>(g[i * r + k]) * X[i * d + c];
      G[k * d + c] += static_cast<T>(acc);
    }
}

// LayerNorm and RMSNorm, accumulating in double (the oracle of nn/norms.hpp's vector code).
/// out [N, C] = (x - mean) * rstd * weight [C] + bias [C]; saves mean [N], rstd [N] for backward.
/// bias may be null. PyTorch's LayerNorm: biased variance, eps inside the square root.
template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias,
                       Index n, Index c, double eps) {
  for (Index i = 0; i < n; ++i) {
    const T* xi = x + i * c;
    double m = 0;
    for (Index j = 0; j < c; ++j) m += xi[j];
    m /= static_cast<double>(c);
    double v = 0;
    for (Index j = 0; j < c; ++j) v += (xi[j] - m) * (xi[j] - m);
    v /= static_cast<double>(c);
    const double r = 1.0 / std::sqrt(v + eps);
    for (Index j = 0; j < c; ++j) {
      const double norm = (xi[j] - m) * r;
      out[i * c + j] =
          static_cast<T>(norm * weight[j] + (bias ? static_cast<double>(bias[j]) : 0.0));
    }
    mean[i] = static_cast<T>(m);
    rstd[i] = static_cast<T>(r);
  }
}

/// dx [N, C] = d/dx; dweight [C] += sum_n dout * xhat; dbias [C] += sum_n dout.
/// dx, dweight and dbias may each be null.
template <class T>
void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight,
                        const T* mean, const T* rstd, Index n, Index c) {
  for (Index i = 0; i < n; ++i) {
    const T* xi = x + i * c;
    const T* gi = dout + i * c;
    const double m = mean[i], r = rstd[i];
    double sum_g = 0, sum_gx = 0;  // sums of g = dout * weight and of g * xhat
    for (Index j = 0; j < c; ++j) {
      const double xhat = (xi[j] - m) * r;
      const double g = static_cast<double>(gi[j]) * weight[j];
      sum_g += g;
      sum_gx += g * xhat;
      if (dweight) dweight[j] += static_cast<T>(gi[j] * xhat);
      if (dbias) dbias[j] += gi[j];
    }
    if (!dx) continue;
    const double inv_c = 1.0 / static_cast<double>(c);
    for (Index j = 0; j < c; ++j) {
      const double xhat = (xi[j] - m) * r;
      const double g = static_cast<double>(gi[j]) * weight[j];
      dx[i * c + j] = static_cast<T>(r * (g - inv_c * sum_g - xhat * inv_c * sum_gx));
    }
  }
}

/// out [N, C] = x * rstd * weight [C], rstd = 1 / sqrt(mean(x^2) + eps); saves rstd [N].
/// (Llama's RMSNorm.)
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* weight, Index n, Index c, double eps) {
  for (Index i = 0; i < n; ++i) {
    const T* xi = x + i * c;
    double ss = 0;
    for (Index j = 0; j < c; ++j) ss += static_cast<double>(xi[j]) * xi[j];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(c) + eps);
    for (Index j = 0; j < c; ++j) out[i * c + j] = static_cast<T>(xi[j] * r * weight[j]);
    rstd[i] = static_cast<T>(r);
  }
}

/// dx [N, C] (may be null), dweight [C] += sum_n dout * x * rstd (may be null).
template <class T>
void rmsnorm_backward(T* dx, T* dweight, const T* dout, const T* x, const T* weight, const T* rstd,
                      Index n, Index c) {
  for (Index i = 0; i < n; ++i) {
    const T* xi = x + i * c;
    const T* gi = dout + i * c;
    const double r = rstd[i];
    double dot = 0;  // sum_j g_j x_j with g = dout * weight
    for (Index j = 0; j < c; ++j) {
      dot += static_cast<double>(gi[j]) * weight[j] * xi[j];
      if (dweight) dweight[j] += static_cast<T>(gi[j] * xi[j] * r);
    }
    if (!dx) continue;
    const double k = r * r * r * dot / static_cast<double>(c);
    for (Index j = 0; j < c; ++j) dx[i * c + j] = static_cast<T>(r * gi[j] * weight[j] - k * xi[j]);
  }
}

// Cross-entropy and AdamW, one element at a time in double (the oracles of kernels/cpu/cross_entropy.hpp
// and kernels/cpu/adamw.hpp). Targets are assumed valid here; the fast paths check them.

/// max(row) and sum(exp(row - max)) of one row of logits.
template <class T>
std::pair<double, double> row_max_and_exp_sum(const T* row, Index vocab) {
  double max = row[0];
  for (Index j = 1; j < vocab; ++j) max = std::max(max, static_cast<double>(row[j]));
  double sum = 0;
  for (Index j = 0; j < vocab; ++j) sum += std::exp(row[j] - max);
  return {max, sum};
}

/// losses [N] (0 for rows whose target is ignore_index) and the number of counted rows; returns
/// the mean of -log softmax(logits [N, V])[target] over the counted rows (0 when none).
template <class T>
double cross_entropy_forward(T* losses, const T* logits, const std::int32_t* targets, Index n,
                             Index vocab, std::int32_t ignore_index, Index* counted) {
  double total = 0;
  Index count = 0;
  for (Index i = 0; i < n; ++i) {
    if (targets[i] == ignore_index) {
      if (losses) losses[i] = T(0);
      continue;
    }
    const T* row = logits + i * vocab;
    const auto [max, sum] = row_max_and_exp_sum(row, vocab);
    const double loss = std::log(sum) + max - row[targets[i]];
    if (losses) losses[i] = static_cast<T>(loss);
    total += loss;
    ++count;
  }
  if (counted) *counted = count;
  return count ? total / static_cast<double>(count) : 0.0;
}

/// dlogits [N, V] = dloss / counted * (softmax(logits) - onehot(target)), 0 for ignored rows.
template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const std::int32_t* targets, Index n,
                            Index vocab, Index counted, double dloss, std::int32_t ignore_index) {
  const double scale = counted ? dloss / static_cast<double>(counted) : 0.0;
  for (Index i = 0; i < n; ++i) {
    T* drow = dlogits + i * vocab;
    if (targets[i] == ignore_index) {
      std::fill(drow, drow + vocab, T(0));
      continue;
    }
    const T* row = logits + i * vocab;
    const auto [max, sum] = row_max_and_exp_sum(row, vocab);
    for (Index j = 0; j < vocab; ++j)
      drow[j] =
          static_cast<T>(scale * (std::exp(row[j] - max) / sum - (j == targets[i] ? 1.0 : 0.0)));
  }
}

/// One AdamW step (torch.optim.AdamW) at step number t >= 1 over n parameters, in double.
template <class T>
void adamw_step(T* params, T* m, T* v, const T* grads, Index n, double lr, double beta1,
                double beta2, double eps, double weight_decay, std::int64_t t) {
  const double c1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double sqrt_c2 = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t)));
  for (Index i = 0; i < n; ++i) {
    const double g = grads[i];
    const double mi = beta1 * m[i] + (1.0 - beta1) * g;
    const double vi = beta2 * v[i] + (1.0 - beta2) * g * g;
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    const double denom = std::sqrt(vi) / sqrt_c2 + eps;
    params[i] = static_cast<T>(params[i] * (1.0 - lr * weight_decay) - lr / c1 * mi / denom);
  }
}

/// Attention (kernels/cpu/attention.hpp) one score at a time in double: out [B*T, H*d] and probs
/// [B, H, T, T] from q [B*T, H*d], k, v [B*T, Hkv*d]; key_mask [B, T] may be null.
template <class T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                       const std::uint8_t* key_mask, Index batch, Index seq, Index heads,
                       Index kv_heads, Index head_dim, bool causal) {
  const Index qw = heads * head_dim, kw = kv_heads * head_dim, group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> score(static_cast<std::size_t>(seq));
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < heads; ++h)
      for (Index i = 0; i < seq; ++i) {
        const Index g = h / group;
        T* p = probs + ((b * heads + h) * seq + i) * seq;
        double max = -HUGE_VAL;
        for (Index j = 0; j < seq; ++j) {
          const bool visible =
              (!causal || j <= i) && (key_mask == nullptr || key_mask[b * seq + j] != 0);
          double dot = 0;
          for (Index c = 0; c < head_dim; ++c)
            dot += static_cast<double>(q[(b * seq + i) * qw + h * head_dim + c]) *
                   k[(b * seq + j) * kw + g * head_dim + c];
          score[std::size_t(j)] = visible ? dot * scale : -HUGE_VAL;
          max = std::max(max, score[std::size_t(j)]);
        }
        double sum = 0;
        for (Index j = 0; j < seq; ++j) {
          score[std::size_t(j)] = max == -HUGE_VAL ? 0.0 : std::exp(score[std::size_t(j)] - max);
          sum += score[std::size_t(j)];
        }
        for (Index j = 0; j < seq; ++j)
          p[j] = static_cast<T>(sum > 0 ? score[std::size_t(j)] / sum : 0.0);
        for (Index c = 0; c < head_dim; ++c) {
          double acc = 0;
          for (Index j = 0; j < seq; ++j)
            acc += (sum > 0 ? score[std::size_t(j)] / sum : 0.0) *
                   v[(b * seq + j) * kw + g * head_dim + c];
          out[(b * seq + i) * qw + h * head_dim + c] = static_cast<T>(acc);
        }
      }
}

/// dq, dk, dv (overwritten) of attention from dout and the forward's probs, in double.
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q, const T* k,
                        const T* v, Index batch, Index seq, Index heads, Index kv_heads,
                        Index head_dim) {
  const Index qw = heads * head_dim, kw = kv_heads * head_dim, group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> gq(static_cast<std::size_t>(batch * seq * qw), 0.0),
      gk(static_cast<std::size_t>(batch * seq * kw), 0.0), gv(gk.size(), 0.0),
      dp(static_cast<std::size_t>(seq));
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < heads; ++h)
      for (Index i = 0; i < seq; ++i) {
        const Index g = h / group;
        const T* p = probs + ((b * heads + h) * seq + i) * seq;
        const T* go = dout + (b * seq + i) * qw + h * head_dim;
        double rowdot = 0;
        for (Index j = 0; j < seq; ++j) {
          double acc = 0;
          for (Index c = 0; c < head_dim; ++c)
            acc += static_cast<double>(go[c]) * v[(b * seq + j) * kw + g * head_dim + c];
          dp[std::size_t(j)] = acc;
          rowdot += static_cast<double>(p[j]) * acc;
          for (Index c = 0; c < head_dim; ++c)
            gv[std::size_t((b * seq + j) * kw + g * head_dim + c)] +=
                static_cast<double>(p[j]) * go[c];
        }
        for (Index j = 0; j < seq; ++j) {
          const double ds = static_cast<double>(p[j]) * (dp[std::size_t(j)] - rowdot) * scale;
          for (Index c = 0; c < head_dim; ++c) {
            gq[std::size_t((b * seq + i) * qw + h * head_dim + c)] +=
                ds * k[(b * seq + j) * kw + g * head_dim + c];
            gk[std::size_t((b * seq + j) * kw + g * head_dim + c)] +=
                ds * q[(b * seq + i) * qw + h * head_dim + c];
          }
        }
      }
  for (std::size_t e = 0; e < gq.size(); ++e) dq[e] = static_cast<T>(gq[e]);
  for (std::size_t e = 0; e < gk.size(); ++e) {
    dk[e] = static_cast<T>(gk[e]);
    dv[e] = static_cast<T>(gv[e]);
  }
}

}  // namespace wegeft::reference
