"""Running a model in eval mode for a while: generation, reconstruction grids and
likelihoods use BatchNorm's running statistics (and leave them alone), then the model goes
back to the mode it was in."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)
