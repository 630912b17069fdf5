"""aigc_fast: fused C++/CUDA kernels for training GANs and VAEs in PyTorch.

    import aigc_fast
    z, kl = aigc_fast.reparameterize(mu, logvar, return_kl=True)
    loss, recon, kl = aigc_fast.vae_loss(decoder(z), x, mu, logvar)
    d_loss = aigc_fast.gan_d_loss(D(x), D(fake.detach()), "hinge")
    aigc_fast.info()   # what is compiled, and what each op will run
"""

from . import _extension

_extension.load()  # never raises: without kernels every op runs its reference

from . import data, evaluation, models, nn, reference, sampling, train  # noqa: E402
from ._impl import get_impl, set_impl, use_impl  # noqa: E402
from ._info import info  # noqa: E402
from ._version import __version__  # noqa: E402
from .ops import bias_act, bn_act, gan_d_loss, gan_g_loss, reparameterize, vae_loss  # noqa: E402

__all__ = [
    "__version__",
    "bias_act",
    "bn_act",
    "data",
    "evaluation",
    "gan_d_loss",
    "gan_g_loss",
    "get_impl",
    "info",
    "models",
    "nn",
    "reference",
    "reparameterize",
    "sampling",
    "set_impl",
    "train",
    "use_impl",
    "vae_loss",
]
