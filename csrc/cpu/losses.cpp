// CPU kernels of the GAN and VAE losses. Tiles (losses.h) run in parallel; inside a tile,
// one simple loop over float32 (or float64) arrays vectorizes the shared math, writes the
// gradients and sums the loss into a float64 accumulator. Inputs may each have their own
// dtype (autocast gives bfloat16 logits and float32 targets): tiles.h converts.
#include "../losses.h"

#include <algorithm>

#include "isa.h"
#include "tiles.h"

namespace aigc_fast {
namespace {

constexpr int64_t kChunk = kLossChunk;

// The loss of elements [0, n) summed in lanes of T, for short blocks (see blocked_sum).
template <TermKind K, typename T>
AIGC_CPU_CLONES T logit_block(const T* x, int64_t n, T param, T scale, T* grad) {
  T sum = T(0);
  AIGC_SIMD_SUM(sum)
  for (int64_t i = 0; i < n; ++i) {
    T d_x;
    sum += logit_term<K>(x[i], param, d_x);
    grad[i] = d_x * scale;
  }
  return sum;
}

template <ReconKind R, bool kTargetGrad, typename T>
AIGC_CPU_CLONES T recon_block(const T* x, const T* t, int64_t n, T scale, T* d_x, T* d_t) {
  T sum = T(0);
  AIGC_SIMD_SUM(sum)
  for (int64_t i = 0; i < n; ++i) {
    T gx, gt;
    sum += recon_term<R, kTargetGrad>(x[i], t[i], gx, gt);
    d_x[i] = gx * scale;
    if constexpr (kTargetGrad) d_t[i] = gt * scale;
  }
  return sum;
}

template <typename T>
AIGC_CPU_CLONES T kl_block(const T* mu, const T* logvar, int64_t n, T scale, T* d_mu, T* d_logvar) {
  T sum = T(0);
  AIGC_SIMD_SUM(sum)
  for (int64_t i = 0; i < n; ++i) {
    T dm, dl;
    sum += kl_term_with_grads(mu[i], logvar[i], dm, dl);
    d_mu[i] = dm * scale;
    d_logvar[i] = dl * scale;
  }
  return sum;
}

// The float64 sum of block_sum(begin, length) over short blocks covering [0, n). Inside a
// block the lanes sum in the math type: the AVX2 clones leave a loop scalar when it mixes
// float math with a double accumulator, and a 256-element block adds only 32 values per
// 8-wide lane, so the float partial sums stay accurate to about 1e-6 relative.
constexpr int64_t kSumBlock = 256;

template <typename F>
double blocked_sum(int64_t n, const F& block_sum) {
  double total = 0.0;
  for (int64_t begin = 0; begin < n; begin += kSumBlock) {
    total += static_cast<double>(block_sum(begin, std::min(kSumBlock, n - begin)));
  }
  return total;
}

template <typename T>
void gan_impl(GanLoss& op) {
  std::vector<int64_t> first_tile{0};
  int64_t elements = 0;
  for (const LogitTerm& term : op.terms) {
    first_tile.push_back(first_tile.back() + term.tiles.count());
    elements += term.x.numel();
  }
  double* partials = op.partials.mutable_data_ptr<double>();
  for_units(first_tile.back(), elements, [&](int64_t first, int64_t last) {
    alignas(64) T x_buf[kChunk], grad_buf[kChunk];
    size_t k = 0;
    for (int64_t t = first; t < last; ++t) {
      while (t >= first_tile[k + 1]) ++k;
      const LogitTerm& term = op.terms[k];
      const int64_t tile = t - first_tile[k];
      const int64_t begin = term.tiles.begin(tile), n = term.tiles.end(tile) - begin;
      const bool want_grad = term.grad.numel() > 0;
      T* grad = want_grad ? output(term.grad, begin, grad_buf) : grad_buf;
      const T* x = load(term.x, begin, n, x_buf);
      const T param = static_cast<T>(term.param), scale = T(1) / static_cast<T>(term.x.numel());
      partials[t] = with_term_kind(term.kind, [&](auto kind) {
        return blocked_sum(n, [&](int64_t b, int64_t len) {
          return logit_block<decltype(kind)::value>(x + b, len, param, scale, grad + b);
        });
      });
      if (want_grad) store(grad, term.grad, begin, n);
    }
  });
  double loss = 0.0;
  for (size_t k = 0; k < op.terms.size(); ++k) {
    double sum = 0.0;
    for (int64_t t = first_tile[k]; t < first_tile[k + 1]; ++t) sum += partials[t];
    loss += sum / static_cast<double>(op.terms[k].x.numel());
  }
  *op.loss.mutable_data_ptr<T>() = static_cast<T>(loss);
}

template <typename T>
void vae_impl(VaeLoss& op) {
  const RowTiles tiles = op.recon_tiles;
  const int64_t recon_units = tiles.count(), batch = op.batch();
  const T scale = static_cast<T>(op.grad_scale());
  const T kl_scale = static_cast<T>(op.kl_grad_scale());
  const bool want_recon = op.grad_recon.numel() > 0, want_target = op.grad_target.numel() > 0;
  const bool want_mu = op.grad_mu.numel() > 0, want_logvar = op.grad_logvar.numel() > 0;
  double* partials = op.partials.mutable_data_ptr<double>();
  // Units, sample by sample: its recon tiles, then its KL (in chunks if the latent is long).
  // Interleaved so that an even split of units between threads is an even split of work.
  const int64_t units_per_sample = tiles.chunks_per_row + 1;
  for_units(batch * units_per_sample, op.recon.numel() + op.mu.numel(), [&](int64_t first, int64_t last) {
    alignas(64) T a_buf[kChunk], b_buf[kChunk], da_buf[kChunk], db_buf[kChunk];
    for (int64_t u = first; u < last; ++u) {
      const int64_t sample = u / units_per_sample, chunk = u % units_per_sample;
      if (chunk < tiles.chunks_per_row) {
        const int64_t tile = sample * tiles.chunks_per_row + chunk;
        const int64_t begin = tiles.begin(tile), n = tiles.end(tile) - begin;
        T* d_x = want_recon ? output(op.grad_recon, begin, da_buf) : da_buf;
        T* d_t = want_target ? output(op.grad_target, begin, db_buf) : db_buf;
        const T* x = load(op.recon, begin, n, a_buf);
        const T* t = load(op.target, begin, n, b_buf);
        partials[tile] = with_recon_kind(op.recon_kind, want_target, [&](auto kind, auto target_grad) {
          return blocked_sum(n, [&](int64_t b, int64_t len) {
            return recon_block<decltype(kind)::value, decltype(target_grad)::value>(x + b, t + b, len, scale,
                                                                                     d_x + b, d_t + b);
          });
        });
        if (want_recon) store(d_x, op.grad_recon, begin, n);
        if (want_target) store(d_t, op.grad_target, begin, n);
      } else {
        double kl = 0.0;
        const int64_t row_begin = sample * op.latent;
        for (int64_t begin = row_begin; begin < row_begin + op.latent; begin += kChunk) {
          const int64_t n = std::min(kChunk, row_begin + op.latent - begin);
          T* d_mu = want_mu ? output(op.grad_mu, begin, da_buf) : da_buf;
          T* d_logvar = want_logvar ? output(op.grad_logvar, begin, db_buf) : db_buf;
          const T* mu = load(op.mu, begin, n, a_buf);
          const T* logvar = load(op.logvar, begin, n, b_buf);
          kl += blocked_sum(n, [&](int64_t b, int64_t len) {
            return kl_block(mu + b, logvar + b, len, kl_scale, d_mu + b, d_logvar + b);
          });
          if (want_mu) store(d_mu, op.grad_mu, begin, n);
          if (want_logvar) store(d_logvar, op.grad_logvar, begin, n);
        }
        partials[recon_units + sample] = kl;
      }
    }
  });
  // Per-sample totals, then the reduction, in sample order.
  const VaeOutputs<T> out = vae_outputs<T>(op);
  double recon_sum = 0.0, kl_sum = 0.0;
  for (int64_t b = 0; b < batch; ++b) {
    const double recon = tiles.row_total(partials, b), kl = partials[recon_units + b];
    if (op.reduction == Reduction::kNone) out.sample(b, recon, kl);
    recon_sum += recon;
    kl_sum += kl;
  }
  if (op.reduction != Reduction::kNone) out.batch(recon_sum, kl_sum, batch, op.reduction);
}

}  // namespace

void gan_loss_cpu(GanLoss& op) {
  if (op.double_math) return gan_impl<double>(op);
  gan_impl<float>(op);
}

void vae_loss_cpu(VaeLoss& op) {
  if (op.double_math) return vae_impl<double>(op);
  vae_impl<float>(op);
}

}  // namespace aigc_fast
