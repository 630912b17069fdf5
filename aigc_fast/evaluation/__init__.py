"""Evaluation with no download: a small classifier trained on the run's real data gives the
feature space for FID and KID, a classifier-based Inception Score, class coverage and the
classification accuracy score; VAEs also get held-out ELBO and importance-sampled NLL.

    results = aigc_fast.evaluation.evaluate("runs/mnist-gan")   # also: aigc-fast evaluate DIR
"""

from .classifier import Classifier, train_classifier
from .likelihood import vae_likelihood
from .metrics import class_coverage, frechet_distance, inception_score, kernel_distance
from .run import evaluate, format_table

__all__ = ["Classifier", "class_coverage", "evaluate", "format_table", "frechet_distance", "inception_score",
           "kernel_distance", "train_classifier", "vae_likelihood"]
