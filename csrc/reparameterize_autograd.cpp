// Autograd of aigc_fast::reparameterize, in C++ on the Autograd dispatch key. A training
// step then runs no Python for it: torch.library's Python register_autograd wrapper cost
// about 60 us per forward+backward, a quarter of the whole step at a 128x64 latent.
// torch.compile traces through a C++ autograd kernel like this one (AOTAutograd runs it on
// fake tensors), as it does for torchvision's ops. Under create_graph (a Hessian-vector
// product through the sampling step) the backward is written with differentiable ATen ops
// instead of the kernel, so second derivatives come out right.
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "broadcast.h"
#include "checks.h"
#include "find_op.h"
#include "loss_derivative.h"

namespace aigc_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<at::Tensor>;

auto forward_op() {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const OptionalTensor&,
                                                 const OptionalTensor&, bool)>("aigc_fast::reparameterize");
  return op;
}

auto backward_op() {
  static const auto op = find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const OptionalTensor&, const at::Tensor&, const at::Tensor&, const OptionalTensor&,
      const OptionalTensor&, const OptionalTensor&, std::array<bool, 3>)>("aigc_fast::reparameterize_backward");
  return op;
}

OptionalTensor if_defined(const at::Tensor& t) {
  return t.defined() ? OptionalTensor(t) : std::nullopt;
}

// Whether the backward recovers std * eps as z - mu from the saved output z. Yes for
// float32/float64, except where |z| is so far above std that the rounding of z would swamp
// std * eps (recovery_is_lossy: the seed's noise is regenerated there, so the seed is saved
// too); for 16-bit dtypes that is everywhere, so the backward regenerates all the noise.
// z is an output the caller keeps anyway, so keeping it costs no memory; the noise itself is
// never kept.
bool recover_from_z(const OptionalTensor& eps, const at::Tensor& mu) {
  return !eps.has_value() && (mu.scalar_type() == at::kFloat || mu.scalar_type() == at::kDouble);
}

// A tensor made under torch.inference_mode cannot be saved for backward. Such an input takes
// no gradient, but the backward still reads it (mu for z - mu, logvar for std); eager's
// formula saves neither, so it works there. A copy, in that rare case, keeps it working here.
at::Tensor savable(const at::Tensor& t) {
  return t.defined() && t.is_inference() ? t.clone() : t;
}

class ReparameterizeFunction : public torch::autograd::Function<ReparameterizeFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               const OptionalTensor& eps, const OptionalTensor& seed, bool compute_kl) {
    at::Tensor z, kl;
    {  // scoped: keep_output's detach() must run above it (see there)
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(z, kl) = forward_op().call(mu, logvar, eps, seed, compute_kl);
    }
    ctx->save_for_backward({savable(mu), savable(logvar), savable(eps.value_or(at::Tensor())),
                            seed.value_or(at::Tensor())});
    if (recover_from_z(eps, mu)) keep_output(ctx, z);
    ctx->saved_data["compute_kl"] = compute_kl;
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined, not a zeros op
    return {z, kl};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &mu = saved[0], &logvar = saved[1], &eps = saved[2], &seed = saved[3];
    const at::Tensor z = take_output(ctx);
    const bool compute_kl = ctx->saved_data["compute_kl"].toBool();
    // Gradient edges exist only for the tensors passed in: mu, logvar, then eps if given (and
    // the seed, which takes none): eps's index is 2 only when it was given.
    const bool need_mu = ctx->needs_input_grad(0);
    const bool need_logvar = ctx->needs_input_grad(1);
    const bool need_eps = eps.defined() && ctx->needs_input_grad(2);
    const bool kernel_mu = need_mu && compute_kl;  // without the KL term, dmu is grad_z itself
    const OptionalTensor grad_kl = compute_kl ? if_defined(grads[1]) : std::nullopt;
    at::Tensor grad_mu, grad_logvar, grad_eps;
    if (at::GradMode::is_enabled()) {  // (leaves z's term out where z was not used)
      std::tie(grad_mu, grad_logvar, grad_eps) = differentiable_backward(grads[0], grad_kl, mu, logvar, eps, seed);
    } else {
      // Undefined: z was not used (only the KL); a zero gradient, whose term the kernels
      // count as exactly zero (reparameterize.h, grad_logvar: not 0 * an overflowing std).
      const at::Tensor grad_z = grads[0].defined() ? grads[0] : at::zeros_like(mu);
      if (kernel_mu || need_logvar || need_eps) {
        std::tie(grad_mu, grad_logvar, grad_eps) =
            backward_op().call(grad_z, grad_kl, mu, logvar, if_defined(eps), if_defined(seed), if_defined(z),
                               {kernel_mu, need_logvar, need_eps});
      }
      if (need_mu && !kernel_mu) grad_mu = grad_z;
    }
    return {need_mu ? grad_mu : at::Tensor(), need_logvar ? grad_logvar : at::Tensor(),
            need_eps ? grad_eps : at::Tensor(), at::Tensor(), at::Tensor()};
  }

 private:
  // z is kept outside save_for_backward, as a detached alias (z's storage and version
  // counter, not its graph) and the version it had: eager's mu + std * eps keeps no z, so
  // z may be modified in place before backward there (z.clamp_(), z.mul_(t)), and a saved
  // output would turn that into an autograd error. A modified z is not used: the backward
  // regenerates the noise from the seed instead (what 16-bit inputs always do).
  // The alias shares z's version counter only when detach() runs with autograd's dispatch
  // keys on: below them (AutoDispatchBelowADInplaceOrView) it gets a counter of its own,
  // and a modified z would be read as if unmodified. Not seen by saved-tensor hooks
  // (save_on_cpu, checkpointing): z is a latent, and the decoder's first layer saves it.
  // (Modified through .data, z keeps its version, as any saved tensor does.)
  static void keep_output(AutogradContext* ctx, const at::Tensor& z) {
    ctx->saved_data["z"] = z.detach();
    ctx->saved_data["z_version"] = static_cast<int64_t>(z._version());
  }

  // The kept z if it is still as the forward wrote it, else undefined. Let go of by the
  // backward that frees the graph (one without retain_graph), as the engine frees saved
  // tensors: it does not free saved_data, and a graph kept alive afterwards (a loss kept for
  // logging) must not keep z's storage. Every plain backward (create_graph draws the noise
  // again) through a retained graph reads it, so they all give the same gradients
  // (gradcheck's reentrancy check compares them bit for bit; z - mu and the regenerated
  // noise differ in the last bits). (Compiled autograd runs the backward on a copy of the
  // context, so there the node keeps z until it is freed.)
  static at::Tensor take_output(AutogradContext* ctx) {
    const auto kept = ctx->saved_data.find("z");
    if (kept == ctx->saved_data.end()) return at::Tensor();
    at::Tensor z = kept->second.toTensor();
    if (!torch::autograd::get_current_graph_task_keep_graph()) ctx->saved_data.erase(kept);
    const bool unmodified = static_cast<int64_t>(z._version()) == ctx->saved_data.at("z_version").toInt();
    return unmodified ? z : at::Tensor();
  }

  // The kernel's gradients as differentiable ATen ops, in the math dtype: d/dmu = grad_z,
  // d/dlogvar = grad_z std eps / 2, d/deps = grad_z std, plus the KL's grad_kl mu and
  // grad_kl (var - 1) / 2. The noise is a constant of the sample: the explicit eps (itself
  // differentiated when it requires grad), or the seed's noise drawn again by the forward
  // kernel at mu = 0, logvar = 0, where z = eps exactly (z - mu would carry z's rounding).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> differentiable_backward(
      const at::Tensor& grad_z, const OptionalTensor& grad_kl, const at::Tensor& mu, const at::Tensor& logvar,
      const at::Tensor& eps, const at::Tensor& seed) {
    const at::ScalarType math = math_dtype(mu.scalar_type());
    const at::Tensor log_var = logvar.to(math);
    at::Tensor grad_mu, grad_logvar, grad_eps;  // undefined: zero
    if (grad_z.defined()) {
      at::Tensor noise;
      if (eps.defined()) {
        noise = eps.to(math);
      } else {
        at::AutoDispatchBelowADInplaceOrView below_autograd;
        const at::Tensor zero = at::zeros_symint(mu.sym_sizes(), mu.options().dtype(math));
        noise = std::get<0>(forward_op().call(zero, zero, std::nullopt, seed, false));
      }
      const at::Tensor g = grad_z.to(math), std = log_var.mul(0.5).exp();
      grad_mu = g;
      grad_logvar = g.mul(std).mul(noise).mul(0.5);
      grad_eps = g.mul(std);
    }
    if (grad_kl.has_value()) {  // one KL per row (the op needs a row dimension): broadcast over its elements
      const at::Tensor gk = along_dim(grad_kl->to(math), mu, 0);
      const auto [kl_mu, kl_logvar] = kl_term_grads(mu.to(math), log_var);
      grad_mu = grad_mu.defined() ? grad_mu.add(gk.mul(kl_mu)) : gk.mul(kl_mu);
      grad_logvar = grad_logvar.defined() ? grad_logvar.add(gk.mul(kl_logvar)) : gk.mul(kl_logvar);
    }
    const auto as = [](const at::Tensor& grad, const at::Tensor& input) {
      return grad.defined() && input.defined() ? grad.to(input.scalar_type()) : at::Tensor();
    };
    return {as(grad_mu, mu), as(grad_logvar, logvar), as(grad_eps, eps)};
  }
};

std::tuple<at::Tensor, at::Tensor> reparameterize_autograd(const at::Tensor& mu,
                                                           const at::Tensor& logvar,
                                                           const OptionalTensor& eps,
                                                           const OptionalTensor& seed,
                                                           bool compute_kl) {
  const variable_list out = ReparameterizeFunction::apply(mu, logvar, eps, seed, compute_kl);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(aigc_fast, Autograd, m) { m.impl("reparameterize", &reparameterize_autograd); }

}  // namespace aigc_fast
