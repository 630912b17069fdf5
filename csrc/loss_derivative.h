// The derivative column of the loss terms (aigc_fast/losses.h) as differentiable ATen ops,
// for the create_graph path of the loss ops' autograd (loss_autograd.cpp): second
// derivatives through a loss, as a gradient penalty taken through it needs. The kernels
// compute the same derivatives per element in the forward pass; these run only when
// autograd is asked to build a graph of the backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/where.h>

#include <string>
#include <utility>

#include "losses.h"

namespace aigc_fast {

// d/dx of bce_with_logits(x, y) = sigmoid(x) - y, against a label or a tensor of targets,
// written as the kernels write it: (1 - y) - sigmoid(-x) for x >= 0, so that a confident
// right answer keeps its tiny gradient (sigmoid(20) - 1 rounds to 0 in float32).
inline at::Tensor bce_grad(const at::Tensor& x, double y) {
  return at::where(x.lt(0), x.sigmoid().sub(y), at::rsub(x.neg().sigmoid(), 1.0 - y));
}

inline at::Tensor bce_grad(const at::Tensor& x, const at::Tensor& y) {
  return at::where(x.lt(0), x.sigmoid().sub(y), at::rsub(y, 1).sub(x.neg().sigmoid()));
}

// d/dx of logit_term<kind>(x, p). The hinge's step goes through PyTorch's relu backward, so
// its (zero) derivative stays in the graph as it would in plain PyTorch.
inline at::Tensor logit_term_grad(const at::Tensor& x, TermKind kind, double p) {
  switch (kind) {
    case TermKind::kBce: return bce_grad(x, p);
    case TermKind::kSquare: return x.sub(p);
    case TermKind::kHinge: return at::threshold_backward(at::full_like(x, p), x.mul(p).add(1), 0);
    case TermKind::kLinear: return at::full_like(x, p);
  }
  TORCH_INTERNAL_ASSERT(false, "unknown loss term");  // (no default: see with_term_kind)
}

// d/dx and d/dt of recon_term(x, t): bce against a target probability, or squared error.
inline std::pair<at::Tensor, at::Tensor> recon_term_grads(const at::Tensor& x, const at::Tensor& t,
                                                          const std::string& recon_loss) {
  if (recon_loss == "bce") return {bce_grad(x, t), x.neg()};
  const at::Tensor d = x.sub(t).mul(2);
  return {d, d.neg()};
}

// d/dmu and d/dlogvar of kl_normal(mu, logvar): mu and (exp(logvar) - 1) / 2.
inline std::pair<at::Tensor, at::Tensor> kl_term_grads(const at::Tensor& mu, const at::Tensor& logvar) {
  return {mu, logvar.expm1().mul(0.5)};
}

}  // namespace aigc_fast
