// Schemas, argument checks, layouts and dispatch of the GAN and VAE loss ops (kernels in
// cpu/losses.cpp and cuda/losses.cu, autograd in loss_autograd.cpp).
//
// Each op returns its loss values and, for the inputs marked in output_mask, the gradient
// of the loss with respect to them, computed in the same pass (empty tensors otherwise).
#include "losses.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "checks.h"
#include "device_kernel.h"
#include "layout.h"

namespace aigc_fast {

std::pair<TermKind, double> gan_term(const std::string& kind, Role role, double real_label) {
  const double label = role == Role::kReal ? real_label : role == Role::kFake ? 0.0 : 1.0;
  const double sign = role == Role::kFake ? 1.0 : -1.0;
  if (kind == "bce") return {TermKind::kBce, label};
  if (kind == "lsgan") return {TermKind::kSquare, label};
  if (kind == "hinge") return {role == Role::kGenerator ? TermKind::kLinear : TermKind::kHinge, sign};
  if (kind == "wgan") return {TermKind::kLinear, sign};
  TORCH_CHECK(false, "kind must be one of 'bce', 'hinge', 'lsgan', 'wgan', got '", kind, "'");
}

bool any_double(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    if (t.scalar_type() == at::kDouble) return true;
  }
  return false;
}

namespace {

at::TensorOptions math_options(const at::Tensor& like, bool double_math) {
  return like.options().dtype(double_math ? at::kDouble : at::kFloat);
}

// A gradient laid out like the (dense) input it belongs to, or an empty placeholder. Kept in
// float32 for 16-bit inputs: the backward multiplies it by grad_output (the loss scale, under
// GradScaler) before it is rounded to the input's dtype, as eager PyTorch's float32 losses
// do under autocast. Stored as float16 it would underflow first: a mean over 4096 logits
// puts gradients near float16's smallest subnormal (6e-8) before any scale is applied.
at::Tensor grad_like(const at::Tensor& t, bool wanted) {
  const at::ScalarType dtype = c10::promoteTypes(t.scalar_type(), at::kFloat);
  return wanted ? at::empty_like(t, t.options().dtype(dtype)) : at::empty({0}, t.options().dtype(dtype));
}

LogitTerm make_term(const at::Tensor& x, const char* name, const std::string& kind, Role role,
                    double real_label, bool want_grad) {
  check_float_tensor(x, name);
  TORCH_CHECK(x.numel() > 0, name, " is empty: the mean of no logits is undefined");
  LogitTerm term;
  term.x = x.contiguous();
  std::tie(term.kind, term.param) = gan_term(kind, role, real_label);
  term.grad = grad_like(term.x, want_grad);
  term.tiles = RowTiles::make(1, x.numel(), kLossChunk);
  return term;
}

void run(GanLoss& op) {
  int64_t tiles = 0;
  for (const LogitTerm& t : op.terms) tiles += t.tiles.count();
  const at::Tensor& x = op.terms[0].x;
  op.partials = at::empty({tiles}, x.options().dtype(at::kDouble));
  op.loss = at::empty({}, math_options(x, op.double_math));
  run_on_device(x, op, gan_loss_cpu, AIGC_CUDA_KERNEL(gan_loss_cuda));
}

void check_label(const std::string& kind, double real_label) {
  gan_term(kind, Role::kReal, real_label);  // refuses an unknown kind first
  TORCH_CHECK(real_label == 1.0 || kind == "bce" || kind == "lsgan",
              "real_label applies to kind 'bce' and 'lsgan' only, got real_label=", real_label,
              " with kind '", kind, "'");
  TORCH_CHECK(real_label >= 0.0 && real_label <= 1.0, "real_label must be a probability in [0, 1], got ", real_label);
}

ReconKind parse_recon(const std::string& recon_loss) {
  if (recon_loss == "bce") return ReconKind::kBce;
  if (recon_loss == "mse") return ReconKind::kMse;
  TORCH_CHECK(false, "recon_loss must be 'bce' or 'mse', got '", recon_loss, "'");
}

Reduction parse_reduction(const std::string& reduction) {
  if (reduction == "mean") return Reduction::kMean;
  if (reduction == "sum") return Reduction::kSum;
  if (reduction == "none") return Reduction::kNone;
  TORCH_CHECK(false, "reduction must be 'mean', 'sum' or 'none', got '", reduction, "'");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_d_loss_op(const at::Tensor& real,
                                                             const at::Tensor& fake,
                                                             std::string kind, double real_label,
                                                             std::array<bool, 2> output_mask) {
  check_label(kind, real_label);
  check_float_tensor(real, "real_logits");
  check_same_device(fake, "fake_logits", real, "real_logits");
  GanLoss op;
  op.terms.push_back(make_term(real, "real_logits", kind, Role::kReal, real_label, output_mask[0]));
  op.terms.push_back(make_term(fake, "fake_logits", kind, Role::kFake, real_label, output_mask[1]));
  op.double_math = any_double({real, fake});
  run(op);
  return {op.loss, op.terms[0].grad, op.terms[1].grad};
}

std::tuple<at::Tensor, at::Tensor> gan_g_loss_op(const at::Tensor& fake, std::string kind,
                                                 bool need_grad) {
  GanLoss op;
  op.terms.push_back(make_term(fake, "fake_logits", kind, Role::kGenerator, 1.0, need_grad));
  op.double_math = any_double({fake});
  run(op);
  return {op.loss, op.terms[0].grad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_op(const at::Tensor& recon, const at::Tensor& target, const at::Tensor& mu,
            const at::Tensor& logvar, std::string recon_loss, const at::Tensor& beta,
            std::string reduction, std::array<bool, 4> output_mask) {
  check_float_tensor(recon, "recon");
  check_float_tensor(target, "target");
  check_float_tensor(mu, "mu");
  check_float_tensor(logvar, "logvar");
  check_same_device(target, "target", recon, "recon");
  check_same_device(mu, "mu", recon, "recon");
  check_same_device(logvar, "logvar", recon, "recon");
  TORCH_CHECK(target.sizes() == recon.sizes(), "target must have the same shape as recon, got ",
              target.sizes(), " and ", recon.sizes());
  TORCH_CHECK(logvar.sizes() == mu.sizes(), "logvar must have the same shape as mu, got ",
              logvar.sizes(), " and ", mu.sizes());
  TORCH_CHECK(recon.dim() >= 1 && mu.dim() >= 1,
              "recon and mu need a batch dimension, got shapes ", recon.sizes(), " and ", mu.sizes());
  TORCH_CHECK(mu.size(0) == recon.size(0), "mu and recon must have the same batch size, got ",
              mu.size(0), " and ", recon.size(0));
  TORCH_CHECK(recon.size(0) > 0, "recon is an empty batch: the loss of no samples is undefined");
  // beta is a tensor, not a float, so that torch.compile keeps a changing beta (a KL warm-up)
  // an input of one graph instead of a constant guarded per value; on the CPU, read with no
  // device synchronization.
  TORCH_CHECK(beta.dim() == 0 && beta.device().is_cpu() && at::isFloatingType(beta.scalar_type()),
              "beta must be a 0-d floating-point CPU tensor, got ", beta.scalar_type(), " of shape ",
              beta.sizes(), " on ", beta.device());

  VaeLoss op;
  op.recon_kind = parse_recon(recon_loss);
  op.reduction = parse_reduction(reduction);
  op.beta = beta.item<double>();
  TORCH_CHECK(std::isfinite(op.beta) && op.beta >= 0.0, "beta must be a finite number >= 0 (the KL term's weight), got ",
              op.beta);
  // Read sample by sample in memory order (layout.h): in every dense layout kept as is,
  // contiguous and channels_last, each sample is one block.
  op.recon = in_memory_order(recon);
  op.target = in_order_of(target, op.recon);
  op.mu = mu.contiguous();
  op.logvar = logvar.contiguous();
  const int64_t batch = recon.size(0);
  op.recon_tiles = RowTiles::make(batch, recon.numel() / batch, kLossChunk);
  op.latent = mu.numel() / batch;
  op.double_math = any_double({recon, target, mu, logvar});
  op.grad_recon = grad_like(op.recon, output_mask[0]);
  op.grad_target = grad_like(op.target, output_mask[1]);
  op.grad_mu = grad_like(op.mu, output_mask[2]);
  op.grad_logvar = grad_like(op.logvar, output_mask[3]);
  op.partials = at::empty({op.recon_tiles.count() + batch}, recon.options().dtype(at::kDouble));
  const auto options = math_options(recon, op.double_math);
  const std::vector<int64_t> shape =
      op.reduction == Reduction::kNone ? std::vector<int64_t>{batch} : std::vector<int64_t>{};
  op.loss = at::empty(shape, options);
  op.recon_out = at::empty(shape, options);
  op.kl_out = at::empty(shape, options);
  run_on_device(recon, op, vae_loss_cpu, AIGC_CUDA_KERNEL(vae_loss_cuda));
  return {op.loss, op.recon_out, op.kl_out, op.grad_recon, op.grad_target, op.grad_mu, op.grad_logvar};
}

TORCH_LIBRARY_FRAGMENT(aigc_fast, m) {
  m.def(
      "gan_d_loss(Tensor real_logits, Tensor fake_logits, str kind, float real_label, "
      "bool[2] output_mask) -> (Tensor loss, Tensor grad_real, Tensor grad_fake)");
  m.def("gan_g_loss(Tensor fake_logits, str kind, bool need_grad) -> (Tensor loss, Tensor grad_fake)");
  m.def(
      "vae_loss(Tensor recon, Tensor target, Tensor mu, Tensor logvar, str recon_loss, Tensor beta, "
      "str reduction, bool[4] output_mask) -> (Tensor loss, Tensor recon_term, Tensor kl_term, "
      "Tensor grad_recon, Tensor grad_target, Tensor grad_mu, Tensor grad_logvar)");
}

TORCH_LIBRARY_IMPL(aigc_fast, CPU, m) {
  m.impl("gan_d_loss", &gan_d_loss_op);
  m.impl("gan_g_loss", &gan_g_loss_op);
  m.impl("vae_loss", &vae_loss_op);
}

#ifdef AIGC_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(aigc_fast, CUDA, m) {
  m.impl("gan_d_loss", &gan_d_loss_op);
  m.impl("gan_g_loss", &gan_g_loss_op);
  m.impl("vae_loss", &vae_loss_op);
}
#endif

}  // namespace aigc_fast
