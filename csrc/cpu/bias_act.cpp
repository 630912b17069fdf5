// CPU kernels of aigc_fast::bias_act and of bn_act's normalize pass: y = act(x + bias), or
// act((x - mean) * scale + beta), walked by map_channels (channel_walk.h) over the shared
// formulas of batch_norm.h and activations.h.
#include "../bias_act.h"
#include "../math_type.h"

#include <ATen/ops/zeros.h>

#include "aigc_fast/batch_norm.h"
#include "channel_walk.h"
#include "isa.h"
#include "tiles.h"

namespace aigc_fast {
namespace {

template <bool kAffine, Act A, typename T, typename S>
void affine_act_in(ChannelAffineAct& op) {
  ChannelParams<T, 3> params;
  // Without a bias, x + (-0) is x for every x, -0 included.
  params.values = {channel_values<T>(op.mean, op.channels, T(0)), channel_values<T>(op.scale, op.channels, T(1)),
                   channel_values<T>(op.beta, op.channels, T(-0.0))};
  const T slope = static_cast<T>(op.slope);
  map_channels(Geometry{op.x.numel(), op.channels, op.inner}, params, [&](int64_t begin, int64_t len, const auto& segments) {
    alignas(64) S x_buf[kChunk], y_buf[kChunk];
    const S* x = load(op.x, begin, len, x_buf);
    S* y = output(op.y, begin, y_buf);
    segments([&](int64_t pos, int64_t n, auto step, const auto& p, auto*) {
      constexpr int64_t P = decltype(step)::value;
      const S* xs = x + pos;
      const T *mean = p[0], *scale = p[1], *beta = p[2];
      S* ys = y + pos;
      simd_for(n, [&](int64_t i) {
        put(ys, i, normalize_act<kAffine, A>(math<T>(xs[i]), mean[i * P], scale[i * P], beta[i * P], slope));
      });
    });
    store(y, op.y, begin, len);
  });
}

// In the inputs' own 16-bit type where x and y share it (tiles.h's with_storage).
template <bool kAffine, Act A, typename T>
void affine_act(ChannelAffineAct& op) {
  with_storage<T>({&op.x, &op.y}, [&](auto stored) { affine_act_in<kAffine, A, T, decltype(stored)>(op); });
}

// grad_x = grad_y * f'(v), and where asked (BiasActGrad) the bias gradient's sums of the
// same products, taken before they are rounded to a 16-bit grad_x: in this pass (bias_sums)
// where the walk can sum, else written out for the vendor sum (dz).
template <Act A, typename T, typename S>
void act_backward_in(BiasActGrad& op) {
  const T slope = static_cast<T>(op.slope);
  ChannelParams<T, 0> none;
  double* bias_sums = op.bias_sums.defined() ? op.bias_sums.mutable_data_ptr<double>() : nullptr;
  T* dz_out = op.dz.defined() ? op.dz.mutable_data_ptr<T>() : nullptr;
  map_channels(Geometry{op.y.numel(), op.channels, op.inner}, none, [&](int64_t begin, int64_t len, const auto& segments) {
    alignas(64) S g_buf[kChunk], y_buf[kChunk], dx_buf[kChunk];
    const S* dy = load(op.grad_y, begin, len, g_buf);
    const S* y = load(op.y, begin, len, y_buf);
    S* dx = output(op.grad_x, begin, dx_buf);
    segments([&](int64_t pos, int64_t n, auto step, const auto&, auto* acc) {
      const S *dys = dy + pos, *ys = y + pos;
      S* dxs = dx + pos;
      // (Captures by value: accumulate's reduction does not vectorize through references.)
      const auto grad = [=](int64_t i) {
        const T dz = math<T>(dys[i]) * act_grad_from_output<A>(math<T>(ys[i]), slope);
        put(dxs, i, dz);
        return dz;
      };
      if (acc != nullptr) {
        accumulate<decltype(step)::value, T>(acc, n, grad);
      } else if (dz_out != nullptr) {
        T* dzs = dz_out + begin + pos;
        simd_for(n, [=](int64_t i) { dzs[i] = grad(i); });
      } else {
        simd_for(n, grad);
      }
    });
    store(dx, op.grad_x, begin, len);
  }, bias_sums);
}

template <Act A, typename T>
void act_backward(BiasActGrad& op) {
  with_storage<T>({&op.grad_y, &op.y, &op.grad_x}, [&](auto stored) { act_backward_in<A, T, decltype(stored)>(op); });
}

}  // namespace

void channel_affine_act_cpu(ChannelAffineAct& op, bool affine) {
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    with_math_type(op.x, [&](auto type) {
      using T = decltype(type);
      affine ? affine_act<true, A, T>(op) : affine_act<false, A, T>(op);
    });
  });
}

void bias_act_cpu(BiasAct& op) {
  ChannelAffineAct affine = bias_only(op);
  channel_affine_act_cpu(affine, false);
}

void bias_act_grad_cpu(BiasActGrad& op) {
  if (op.sum_bias) {
    if (can_sum_channels(Geometry{op.y.numel(), op.channels, op.inner})) {
      op.bias_sums = at::zeros({op.channels}, op.y.options().dtype(at::kDouble));
    } else {
      request_unrounded_dz(op);
    }
  }
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    with_math_type(op.y, [&](auto type) { act_backward<A, decltype(type)>(op); });
  });
}

}  // namespace aigc_fast
