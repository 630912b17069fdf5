// The GAN and VAE loss ops as the CPU and CUDA kernels see them: inputs checked and laid
// out by losses.cpp, outputs allocated, work split into RowTiles (tiling.h).
//
// Every reduction is deterministic: each tile sums its elements in a fixed order into its
// own float64 slot of `partials`, and the slots are added in a fixed order afterwards (in
// tile order on the CPU; on CUDA by one 256-thread block, strided then a warp tree), so the
// result does not depend on the number of threads or blocks, and the float64 accumulator
// keeps a float32 loss over millions of elements accurate to its last bit or two. (The
// two orders differ, so CPU and CUDA losses may differ in their last bits.)
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "aigc_fast/losses.h"
#include "aigc_fast/tiling.h"

namespace aigc_fast {

// Elements per tile: a CPU thread's scratch for a tile (four buffers of it, 64 KiB in
// float32) stays in L2.
constexpr int64_t kLossChunk = 4096;

// What each GAN loss kind asks of the real logits (D), the fake logits (D), and the fake
// logits (G, non-saturating for bce): a term shape of aigc_fast/losses.h and its parameter.
enum class Role { kReal, kFake, kGenerator };
std::pair<TermKind, double> gan_term(const std::string& kind, Role role, double real_label);

// Whether the losses' math runs in float64: when any input is float64 (else float32).
bool any_double(at::TensorList tensors);

// One term of a GAN loss: the mean over all elements of x of logit_term<kind>(x, param).
struct LogitTerm {
  at::Tensor x;     // contiguous: a logit map in another layout is copied, so the sum's order
                    // (and its bits) never depend on the layout (logits are small next to images)
  TermKind kind;
  double param;
  at::Tensor grad;  // d(mean)/dx, laid out like x; empty when not asked
  RowTiles tiles;   // one row: the whole tensor
};

// gan_d_loss (terms: real, fake) and gan_g_loss (term: fake).
struct GanLoss {
  std::vector<LogitTerm> terms;
  at::Tensor partials;  // float64, one slot per tile, the tiles of all terms in order
  at::Tensor loss;      // 0-d, math dtype
  bool double_math;     // float64 math (some input is float64), else float32
};

enum class Reduction : int32_t { kMean = 0, kSum = 1, kNone = 2 };

// vae_loss. Per sample b: recon_b = sum over its pixels of recon_term, kl_b = sum over its
// latent elements of kl_normal, total_b = recon_b + beta kl_b; then the reduction.
struct VaeLoss {
  at::Tensor recon, target;  // same layout, each sample one dense block of recon_tiles.row_len
  at::Tensor mu, logvar;     // contiguous, [B, latent]
  ReconKind recon_kind;
  double beta;
  Reduction reduction;
  RowTiles recon_tiles;  // [B, pixels per sample] in chunks of kLossChunk
  int64_t latent;        // latent elements per sample
  // float64 slots: one per recon tile, then one per sample for its KL.
  at::Tensor partials;
  at::Tensor loss, recon_out, kl_out;  // [] or [B] (reduction "none"), math dtype
  at::Tensor grad_recon, grad_target, grad_mu, grad_logvar;  // empty when not asked
  bool double_math;

  int64_t batch() const { return recon_tiles.rows; }
  // The factors d(loss)/d(recon_b) and d(loss)/d(kl_b) that the forward folds into the gradients.
  double grad_scale() const { return reduction == Reduction::kMean ? 1.0 / double(batch()) : 1.0; }
  double kl_grad_scale() const { return beta * grad_scale(); }
};

// vae_loss's outputs from its per-sample sums, written once for both devices' last step
// (which differ only in how they add the samples up): each sample's (reduction "none"),
// or the batch's.
template <typename T>
struct VaeOutputs {
  T* loss;
  T* recon;
  T* kl;
  double beta;

  AIGC_HD void sample(int64_t b, double recon_b, double kl_b) const {
    loss[b] = static_cast<T>(recon_b + beta * kl_b);
    recon[b] = static_cast<T>(recon_b);
    kl[b] = static_cast<T>(kl_b);
  }
  AIGC_HD void batch(double recon_sum, double kl_sum, int64_t samples, Reduction reduction) const {
    const double divisor = reduction == Reduction::kMean ? static_cast<double>(samples) : 1.0;
    sample(0, recon_sum / divisor, kl_sum / divisor);
  }
};

template <typename T>
VaeOutputs<T> vae_outputs(VaeLoss& op) {
  return {op.loss.mutable_data_ptr<T>(), op.recon_out.mutable_data_ptr<T>(), op.kl_out.mutable_data_ptr<T>(),
          op.beta};
}

// Calls f with the kind as a compile-time constant, so each kernel is instantiated per kind.
template <typename F>
auto with_term_kind(TermKind kind, F&& f) {
  using K = TermKind;
  switch (kind) {
    case K::kBce: return f(std::integral_constant<K, K::kBce>{});
    case K::kSquare: return f(std::integral_constant<K, K::kSquare>{});
    case K::kHinge: return f(std::integral_constant<K, K::kHinge>{});
    case K::kLinear: return f(std::integral_constant<K, K::kLinear>{});
  }
  // (No default: the compiler names a kind added to the enum but not here.)
  TORCH_INTERNAL_ASSERT(false, "unknown loss term");
}

template <typename F>
auto with_recon_kind(ReconKind kind, bool target_grad, F&& f) {
  using R = ReconKind;
  using Yes = std::true_type;
  using No = std::false_type;
  if (kind == R::kBce) {
    return target_grad ? f(std::integral_constant<R, R::kBce>{}, Yes{})
                       : f(std::integral_constant<R, R::kBce>{}, No{});
  }
  return target_grad ? f(std::integral_constant<R, R::kMse>{}, Yes{})
                     : f(std::integral_constant<R, R::kMse>{}, No{});
}

void gan_loss_cpu(GanLoss& op);
void vae_loss_cpu(VaeLoss& op);
#ifdef AIGC_FAST_WITH_CUDA
void gan_loss_cuda(GanLoss& op);
void vae_loss_cuda(VaeLoss& op);
#endif

}  // namespace aigc_fast
