"""Running a model in eval mode for a while: generation, reconstruction grids and
likelihoods use BatchNorm's running statistics (and leave them alone), then every module
goes back to the mode it was in."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    # Each module's own mode, not only the model's: module.train(was) would also switch a
    # BatchNorm the user froze with .eval() inside a training model back to training. The
    # flags are set directly both ways, so a module whose train() does more (merges
    # weights, say) sees neither switch, rather than only one.
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield module
    finally:
        for m, was in modes:
            m.training = was
