// Autograd of the loss ops, in C++ on the Autograd key, so a training step runs no Python
// for them (see reparameterize_autograd.cpp for why that matters at small sizes).
//
// The loss kernels return the gradients of the loss with respect to the inputs marked in
// output_mask, computed in the same pass as the loss. Autograd keeps exactly those (and
// references to the inputs, which the caller holds anyway), and its backward only scales
// them by grad_output: a scalar, or one factor per sample for vae_loss(reduction="none").
// Under create_graph (a gradient penalty taken through the loss) the gradients are
// computed again as differentiable ATen ops of the inputs (loss_derivative.h), so second
// derivatives come out right.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <functional>
#include <string>
#include <tuple>
#include <utility>

#include "broadcast.h"
#include "find_op.h"
#include "loss_derivative.h"
#include "losses.h"

namespace aigc_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A loss op's arguments other than its tensor inputs: what the create_graph path needs to
// write the gradients again.
struct LossSettings {
  std::string loss;  // "gan_d_loss", "gan_g_loss" or "vae_loss"
  std::string kind;  // the GAN kind, or the VAE's recon_loss
  double real_label = 1.0;
  std::string reduction;  // vae_loss
  at::Tensor beta;        // vae_loss: a 0-d CPU tensor (a traced input under torch.compile)
};

// The name of a loss op's tensor input i, for errors (the Python functions' names).
const char* input_name(const std::string& loss, size_t i) {
  static const char* const gan_d[] = {"real_logits", "fake_logits"};
  static const char* const vae[] = {"recon", "target", "mu", "logvar"};
  if (loss == "gan_g_loss") return "fake_logits";
  return loss == "gan_d_loss" ? gan_d[i] : vae[i];
}

class PrecomputedGradients : public torch::autograd::Function<PrecomputedGradients> {
 public:
  // `inputs`: the op's tensor inputs, in output_mask order. `kernel` runs the op below
  // autograd and returns its `n_values` loss values, then one gradient per input (empty
  // where the mask, given as bits in `mask`, did not ask for it).
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs,
                               const std::function<variable_list()>& kernel, int64_t n_values,
                               int64_t mask, const LossSettings& settings) {
    variable_list outputs;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      outputs = kernel();
    }
    // The gradients, then the inputs. The gradients are saved as detached aliases: as
    // outputs of this node they would come back from the saved list with this node as
    // their grad_fn, and the backward's fast path hands them out as they are.
    variable_list saved;
    for (auto it = outputs.begin() + n_values; it != outputs.end(); ++it) saved.push_back(it->detach());
    TORCH_INTERNAL_ASSERT(saved.size() == inputs.size());
    // The inputs, for the create_graph path. An inference tensor (made under
    // torch.inference_mode) cannot be saved, and takes no gradient: left out. So are GAN
    // logits that take no gradient, as eager keeps none: each term's gradient reads only its
    // own logits, and such logits may then be changed in place before backward. (The VAE
    // loss's four gradients are written from all four inputs.)
    const bool terms_apart = settings.loss != "vae_loss";
    for (size_t i = 0; i < inputs.size(); ++i) {
      const at::Tensor& t = inputs[i];
      const bool unread = t.is_inference() || (terms_apart && !((mask >> i) & 1));
      saved.push_back(unread ? at::Tensor() : t);
    }
    ctx->saved_data["double_math"] = any_double(inputs);
    if (settings.beta.defined()) saved.push_back(settings.beta);
    ctx->save_for_backward(saved);
    ctx->saved_data["mask"] = mask;
    ctx->saved_data["inputs"] = int64_t(inputs.size());
    ctx->saved_data["loss"] = settings.loss;
    ctx->saved_data["kind"] = settings.kind;
    ctx->saved_data["real_label"] = settings.real_label;
    ctx->saved_data["reduction"] = settings.reduction;
    // Autograd would otherwise fill a zero gradient for every output nobody differentiates
    // (the logging terms and the gradients themselves): a full pass over an image-sized
    // tensor per step, for nothing.
    ctx->set_materialize_grads(false);
    // Only the loss (output 0) is differentiable; the op returns the logging terms and
    // gradients detached (see run_loss).
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const int64_t mask = ctx->saved_data["mask"].toInt();
    const at::Tensor& grad_loss = grad_outputs[0];
    const size_t n = ctx->saved_data["inputs"].toInt();
    variable_list result(n + 4);  // + the kernel, n_values, mask and settings arguments
    if (!grad_loss.defined()) return result;  // the loss itself was not differentiated
    variable_list grads(saved.begin(), saved.begin() + n);
    if (at::GradMode::is_enabled()) grads = differentiable_gradients(ctx, saved);
    for (size_t i = 0; i < n; ++i) {
      if (!ctx->needs_input_grad(i)) continue;
      TORCH_CHECK((mask >> i) & 1, "aigc_fast.", ctx->saved_data["loss"].toStringRef(), ": the gradient of ",
                  input_name(ctx->saved_data["loss"].toStringRef(), i),
                  " was not computed in the forward; call the op with output_mask[", i,
                  "] = True (the aigc_fast Python functions do)");
      result[i] = scaled(grads[i], grad_loss);
    }
    return result;
  }

 private:
  // The kernel's gradients (each with the reduction's factor folded in) as differentiable
  // functions of the inputs, in the math dtype: float64 if an input is, else float32.
  static variable_list differentiable_gradients(AutogradContext* ctx, const variable_list& saved) {
    const std::string loss = ctx->saved_data["loss"].toStringRef();
    const std::string kind = ctx->saved_data["kind"].toStringRef();
    const size_t n = ctx->saved_data["inputs"].toInt();
    const at::ScalarType math = ctx->saved_data["double_math"].toBool() ? at::kDouble : at::kFloat;
    variable_list x;
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& t = saved[n + i];
      x.push_back(t.defined() ? t.to(math) : t);
    }
    if (loss == "vae_loss") {  // (the four gradients are written at once, from all four inputs)
      for (size_t i = 0; i < n; ++i) {
        TORCH_CHECK(x[i].defined(), "aigc_fast.vae_loss: second derivatives need ", input_name(loss, i),
                    ", an inference tensor (made under torch.inference_mode), which autograd cannot save: "
                    "make it outside inference_mode");
      }
      const at::Tensor& beta = saved[2 * n];
      // 1 / batch from the symbolic size: torch.compile's dynamic batch stays dynamic.
      const c10::Scalar scale = ctx->saved_data["reduction"].toStringRef() == "mean"
                                    ? c10::Scalar(1.0 / x[0].sym_size(0)) : c10::Scalar(1.0);
      const auto [d_recon, d_target] = recon_term_grads(x[0], x[1], kind);
      const auto [d_mu, d_logvar] = kl_term_grads(x[2], x[3]);
      const at::Tensor kl_scale = beta.mul(scale);
      return {d_recon.mul(scale), d_target.mul(scale), d_mu.mul(kl_scale), d_logvar.mul(kl_scale)};
    }
    const double real_label = ctx->saved_data["real_label"].toDouble();
    const std::vector<Role> roles =
        loss == "gan_g_loss" ? std::vector<Role>{Role::kGenerator} : std::vector<Role>{Role::kReal, Role::kFake};
    variable_list grads;
    for (size_t i = 0; i < n; ++i) {  // each term is a mean over its logits
      const auto [term, param] = gan_term(kind, roles[i], real_label);
      grads.push_back(x[i].defined() ? logit_term_grad(x[i], term, param).div(c10::Scalar(x[i].sym_numel()))
                                     : at::Tensor());  // left out (see forward): no gradient
    }
    return grads;
  }

  static at::Tensor scaled(const at::Tensor& grad, const at::Tensor& grad_loss) {
    // The saved gradient is the answer, with no second gradient-sized tensor, where nothing
    // else will read it: the graph is freed right after this node (no retain_graph), the
    // gradient is the saved one (no create_graph), it is an ordinary tensor (not one
    // torch.compile traces), and no other tensor shares its memory (the raw op returns the
    // gradients too, and a caller that keeps them must not see them change). Accumulation
    // then takes it (or a view of it, for an input that is a view) into .grad.
    // loss.backward()'s factor 1 returns it as is; any other factor (a loss weight,
    // GradScaler's scale, one per sample; on a GPU always, whose value is not read: that
    // would sync) scales it in place. Measured on the H200 before this: the fused
    // vae_loss's peak was twice eager's, from the product beside the saved gradient. With
    // retain_graph, .grad would share memory with the saved gradient, and zeroing or
    // clipping .grad in place would change (or, through the version counter, invalidate)
    // what the next backward returns: a new tensor then.
    const bool sole_reader = !torch::autograd::get_current_graph_task_keep_graph() &&
                             !at::GradMode::is_enabled() && is_plain(grad) && grad.storage().use_count() == 1;
    if (sole_reader && grad_loss.device().is_cpu() && is_plain(grad_loss) && grad_loss.dim() == 0 &&
        grad_loss.item<double>() == 1.0) {
      return grad;
    }
    at::Tensor factor = grad_loss;
    if (grad_loss.dim() == 1) factor = along_dim(grad_loss, grad, 0);  // one loss per sample
    // In place only with a plain factor: a batched one (autograd.grad's is_grads_batched,
    // jacobian(vectorize=True)) holds a gradient per batch entry, more than grad can.
    return sole_reader && is_plain(grad_loss) ? grad.mul_(factor) : grad.mul(factor).to(grad.scalar_type());
  }

  // Whether t is an ordinary CPU or CUDA tensor: not a functorch wrapper or a tensor traced
  // by torch.compile, which have no value to read or storage to write in place.
  static bool is_plain(const at::Tensor& t) {
    const c10::DispatchKeySet plain{c10::DispatchKey::CPU,          c10::DispatchKey::CUDA,
                                    c10::DispatchKey::ADInplaceOrView, c10::DispatchKey::AutogradCPU,
                                    c10::DispatchKey::AutogradCUDA, c10::DispatchKey::AutocastCPU,
                                    c10::DispatchKey::AutocastCUDA};
    return plain.isSupersetOf(t.key_set());
  }
};

// A loss op's Autograd kernel: `kernel` (the op below autograd) run under
// PrecomputedGradients, and its outputs as the op returns them: the loss, then the logging
// terms and gradients detached. Not mark_non_differentiable in forward: compiled autograd
// (torch._dynamo.config.compiled_autograd) refuses a C++ Function that marks outputs so,
// with an internal assert.
variable_list run_loss(const std::vector<at::Tensor>& inputs, const std::function<variable_list()>& kernel,
                       int64_t n_values, int64_t mask, const LossSettings& settings) {
  variable_list outputs = PrecomputedGradients::apply(at::TensorList(inputs), kernel, n_values, mask, settings);
  for (size_t i = 1; i < outputs.size(); ++i) outputs[i] = outputs[i].detach();
  return outputs;
}

template <typename Tuple>
variable_list to_list(Tuple&& outputs) {
  return std::apply([](auto&... t) { return variable_list{t...}; }, outputs);
}

template <size_t N>
int64_t bits(const std::array<bool, N>& mask) {
  int64_t out = 0;
  for (size_t i = 0; i < N; ++i) out |= int64_t(mask[i]) << i;
  return out;
}

using GanD = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                           std::string, double, std::array<bool, 2>);
using GanG = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, std::string, bool);
using Vae = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, std::string, const at::Tensor&,
    std::string, std::array<bool, 4>);

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_d_loss_autograd(const at::Tensor& real,
                                                                   const at::Tensor& fake,
                                                                   std::string kind, double real_label,
                                                                   std::array<bool, 2> output_mask) {
  static const auto op = find_op<GanD>("aigc_fast::gan_d_loss");
  const variable_list out = run_loss(
      {real, fake}, [&] { return to_list(op.call(real, fake, kind, real_label, output_mask)); }, 1, bits(output_mask),
      LossSettings{"gan_d_loss", kind, real_label});
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> gan_g_loss_autograd(const at::Tensor& fake, std::string kind,
                                                       bool need_grad) {
  static const auto op = find_op<GanG>("aigc_fast::gan_g_loss");
  const variable_list out = run_loss({fake}, [&] { return to_list(op.call(fake, kind, need_grad)); }, 1,
                                     int64_t(need_grad), LossSettings{"gan_g_loss", kind});
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_autograd(const at::Tensor& recon, const at::Tensor& target, const at::Tensor& mu,
                  const at::Tensor& logvar, std::string recon_loss, const at::Tensor& beta,
                  std::string reduction, std::array<bool, 4> output_mask) {
  static const auto op = find_op<Vae>("aigc_fast::vae_loss");
  const variable_list out = run_loss(
      {recon, target, mu, logvar},
      [&] { return to_list(op.call(recon, target, mu, logvar, recon_loss, beta, reduction, output_mask)); }, 3,
      bits(output_mask), LossSettings{"vae_loss", recon_loss, 1.0, reduction, beta});
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6]};
}

}  // namespace

TORCH_LIBRARY_IMPL(aigc_fast, Autograd, m) {
  m.impl("gan_d_loss", &gan_d_loss_autograd);
  m.impl("gan_g_loss", &gan_g_loss_autograd);
  m.impl("vae_loss", &vae_loss_autograd);
}

}  // namespace aigc_fast
