// Schema, argument checks and dispatch of aigc_fast::reparameterize (kernels in cpu/ and cuda/).
#include "reparameterize.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "checks.h"
#include "device_kernel.h"

namespace aigc_fast {
namespace {

// Tiles of mu: per sample (a row each) when the KL is computed, else one row of everything.
RowTiles make_tiles(const at::Tensor& mu, bool per_row) {
  TORCH_CHECK(!per_row || mu.dim() >= 1,
              "the per-sample KL needs a batch dimension: mu must have at least 1 dimension");
  const int64_t rows = per_row ? mu.size(0) : 1;
  const int64_t row_len = rows == 0 ? 0 : mu.numel() / rows;
  return RowTiles::make(rows, row_len, kReparamChunk);
}

void check_seed(const at::Tensor& seed, const at::Tensor& mu) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.dim() == 1 && seed.size(0) == 2,
              "seed must be an int64 tensor of shape [2] holding (seed, offset), got ",
              seed.scalar_type(), " of shape ", seed.sizes());
  check_same_device(seed, "seed", mu, "mu");
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}


std::tuple<at::Tensor, at::Tensor> reparameterize_op(const at::Tensor& mu, const at::Tensor& logvar,
                                                     const std::optional<at::Tensor>& eps,
                                                     const std::optional<at::Tensor>& seed,
                                                     bool compute_kl) {
  check_float_tensor(mu, "mu");
  check_like(logvar, "logvar", mu, "mu");
  TORCH_CHECK(eps.has_value() != seed.has_value(),
              "reparameterize takes exactly one source of noise: eps or seed");
  if (eps.has_value()) check_like(*eps, "eps", mu, "mu");
  if (seed.has_value()) check_seed(*seed, mu);

  ReparamForward op;
  op.mu = mu.contiguous();
  op.logvar = logvar.contiguous();
  op.eps = contiguous(eps);
  op.seed = contiguous(seed);  // the kernels read seed[0] and seed[1] from its data pointer
  op.tiles = make_tiles(mu, compute_kl);
  op.z = at::empty(mu.sizes(), mu.options().memory_format(at::MemoryFormat::Contiguous));
  const auto kl_options = mu.options().dtype(math_dtype(mu.scalar_type()));
  if (compute_kl) {
    op.kl = at::zeros({op.tiles.rows}, kl_options);
    if (op.tiles.chunks_per_row > 1) op.kl_partials = at::empty({op.tiles.count()}, kl_options);
  } else {
    op.kl = at::empty({0}, kl_options);
  }
  if (mu.numel() > 0) {
    run_on_device(mu, op, reparameterize_forward_cpu, AIGC_CUDA_KERNEL(reparameterize_forward_cuda));
  }
  return {op.z, op.kl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_backward_op(
    const at::Tensor& grad_z, const std::optional<at::Tensor>& grad_kl, const at::Tensor& mu,
    const at::Tensor& logvar, const std::optional<at::Tensor>& eps,
    const std::optional<at::Tensor>& seed, const std::optional<at::Tensor>& z,
    std::array<bool, 3> output_mask) {
  check_float_tensor(mu, "mu");
  check_like(logvar, "logvar", mu, "mu");
  check_like(grad_z, "grad_z", mu, "mu");
  // z - mu, with the seed's noise where that loses precision (recovery_is_lossy), when both come.
  TORCH_CHECK(int(eps.has_value()) + int(seed.has_value() || z.has_value()) == 1,
              "reparameterize_backward takes exactly one source of std * eps: eps, seed, z, or z and seed");
  if (eps.has_value()) check_like(*eps, "eps", mu, "mu");
  if (z.has_value()) check_like(*z, "z", mu, "mu");
  if (seed.has_value()) check_seed(*seed, mu);

  ReparamBackward op;
  op.tiles = make_tiles(mu, grad_kl.has_value());
  if (grad_kl.has_value()) {
    TORCH_CHECK(grad_kl->dim() == 1 && grad_kl->size(0) == op.tiles.rows &&
                    grad_kl->scalar_type() == math_dtype(mu.scalar_type()) &&
                    grad_kl->device() == mu.device(),
                "grad_kl must be a ", math_dtype(mu.scalar_type()), " tensor of shape [",
                op.tiles.rows, "] on ", mu.device(), ", got ", grad_kl->scalar_type(), " ",
                grad_kl->sizes(), " on ", grad_kl->device());
    op.grad_kl = grad_kl->contiguous();
  }
  op.grad_z = grad_z.contiguous();
  op.mu = mu.contiguous();
  op.logvar = logvar.contiguous();
  op.eps = contiguous(eps);
  op.seed = contiguous(seed);  // the kernels read seed[0] and seed[1] from its data pointer
  op.z = contiguous(z);
  const auto like_mu = [&](bool wanted) {
    return wanted ? at::empty(mu.sizes(), mu.options().memory_format(at::MemoryFormat::Contiguous))
                  : at::empty({0}, mu.options());
  };
  op.grad_mu = like_mu(output_mask[0]);
  op.grad_logvar = like_mu(output_mask[1]);
  op.grad_eps = like_mu(output_mask[2] && eps.has_value());
  if (mu.numel() > 0) {
    run_on_device(mu, op, reparameterize_backward_cpu, AIGC_CUDA_KERNEL(reparameterize_backward_cuda));
  }
  return {op.grad_mu, op.grad_logvar, op.grad_eps};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(aigc_fast, m) {
  m.def(
      "reparameterize(Tensor mu, Tensor logvar, Tensor? eps, Tensor? seed, bool compute_kl) "
      "-> (Tensor z, Tensor kl)");
  m.def(
      "reparameterize_backward(Tensor grad_z, Tensor? grad_kl, Tensor mu, Tensor logvar, "
      "Tensor? eps, Tensor? seed, Tensor? z, bool[3] output_mask) "
      "-> (Tensor grad_mu, Tensor grad_logvar, Tensor grad_eps)");
}

TORCH_LIBRARY_IMPL(aigc_fast, CPU, m) {
  m.impl("reparameterize", &reparameterize_op);
  m.impl("reparameterize_backward", &reparameterize_backward_op);
}

#ifdef AIGC_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(aigc_fast, CUDA, m) {
  m.impl("reparameterize", &reparameterize_op);
  m.impl("reparameterize_backward", &reparameterize_backward_op);
}
#endif

}  // namespace aigc_fast
