"""Evaluating a run directory: its real data (the same fixed held-out split the trainer
kept out), the evaluation classifier (trained once, cached in RUN_DIR/eval/), samples from
the trained model, and the metrics, written to RUN_DIR/eval/metrics.json and metrics.md."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from .. import data as data_lib
from ..train.checkpoint import load_checkpoint, save_atomic
from ..train.trainer import _Trainer, load_run
from .classifier import Classifier, accuracy, features_and_probs, train_classifier
from .likelihood import vae_likelihood
from .metrics import class_coverage, frechet_distance, inception_score, kernel_distance


class RealData:
    """A run's real images in [0, 1] with labels, split as the trainer split them."""

    def __init__(self, trainer: _Trainer, data=None, *, needs_held_out: bool = True):
        """needs_held_out=False (balanced sampling, which only needs the classifier) accepts
        a run trained with holdout=0: no held-out images then."""
        c = trainer.config
        source = data if data is not None else c.data
        if source is None:
            raise ValueError("the run does not record its data (it was trained on an in-memory set): pass data= "
                             "(a name, a path, or an (images, labels) pair; --data on the command line)")
        if c.holdout <= 0 and needs_held_out:
            raise ValueError("evaluation needs held-out real images: this run was trained with holdout=0")
        self.source = _describe(source)
        loaded = data_lib.load(source, image_size=c.image_size, channels=c.channels, kind="vae")
        if needs_held_out and trainer.data_size is not None and len(loaded) != trainer.data_size:
            # The split is drawn from the number of images, as resuming refuses it too.
            raise ValueError(f"{self.source} holds {len(loaded)} images, the run trained on {trainer.data_size} "
                             "(held-out ones included): the held-out split would not be the run's, and could "
                             "hold images it trained on; pass the data it trained on")
        train, held = data_lib.holdout_split(len(loaded), c.holdout)
        self.train_images, self.train_labels = loaded.images[train], loaded.labels[train]
        self.held_images, self.held_labels = loaded.images[held], loaded.labels[held]
        if len(held) < 2 and needs_held_out:  # checked before a classifier trains for a minute
            raise ValueError(f"holdout={c.holdout} keeps {len(held)} of {len(loaded)} images: the metrics of the "
                             "real held-out images need at least 2")
        # Classes are label values 0..K-1; one distinct value (all 3, say) is no classes at all.
        self.num_classes = int(loaded.labels.max()) + 1 if len(loaded.labels.unique()) > 1 else 1

    def require_classes(self, why: str) -> None:
        if self.num_classes < 2:
            raise ValueError(f"{self.source} has no class labels (one class): {why} (built-in sets, an image folder "
                             "with one subfolder per class, an .npz with labels, or an (images, labels) pair)")


def _describe(source) -> str:
    """A name for the data in results and the classifier cache's key: the name or path as
    given; for arrays in memory their shape and a digest of their bytes (two sets of the
    same shape must not share a cached classifier, and a message must not print them)."""
    if isinstance(source, (str, Path)):
        return str(source)
    parts = source if isinstance(source, tuple) else (source,)
    digest = hashlib.sha1()
    for part in parts:
        digest.update(np.ascontiguousarray(torch.as_tensor(part).cpu().numpy()).tobytes())
    shape = list(torch.as_tensor(parts[0]).shape)
    return f"in-memory images {shape}{' with labels' if len(parts) == 2 else ''} (sha1 {digest.hexdigest()[:12]})"


def run_classifier(run_dir: Union[str, Path], real: RealData, *, epochs: int = 8) -> Tuple[Classifier, float]:
    """(classifier, its held-out accuracy, NaN without held-out images): from
    RUN_DIR/eval/classifier.pt when it was trained on the same data and split, else
    trained now and cached there."""
    path = Path(run_dir) / "eval" / "classifier.pt"
    key = {"data": real.source, "shape": list(real.train_images.shape[1:]), "held_out": len(real.held_images),
           "classes": real.num_classes, "epochs": epochs}
    cached = _read_cache(path)
    if cached is not None:
        if cached["key"] == key:
            model = Classifier(real.train_images.shape[1], real.num_classes)
            model.load_state_dict(cached["state"])
            return model.eval(), cached["accuracy"]
    model = train_classifier(real.train_images, real.train_labels, real.num_classes, epochs=epochs)
    acc = accuracy(model, real.held_images, real.held_labels) if len(real.held_images) else float("nan")
    save_atomic({"key": key, "state": model.state_dict(), "accuracy": acc}, path)
    return model, acc


def _read_cache(path: Path) -> Optional[dict]:
    """The cached classifier, or None when there is none or it cannot be read (a cache:
    trained again rather than stopping the evaluation)."""
    if not path.is_file():
        return None
    try:
        cached = load_checkpoint(path)
    except ValueError as error:  # truncated or overwritten: load_checkpoint names the file and the cause
        warnings.warn(f"the classifier cache cannot be read: {error}; training the classifier again", stacklevel=3)
        return None
    if isinstance(cached, dict) and {"key", "state", "accuracy"} <= set(cached):
        return cached
    warnings.warn(f"{path} is not a classifier cache; training the classifier again", stacklevel=3)
    return None


@torch.no_grad()
def generate_unit(trainer: _Trainer, n: int, *, seed: Union[int, torch.Generator] = 0,
                  batch_size: int = 500) -> torch.Tensor:
    """n generated images in [0, 1] on the CPU, in batches. Each batch's seed is drawn from
    one generator seeded by `seed` (or `seed` itself, a torch.Generator, which then goes
    on to the next call's batches), so sets of different seeds share no batch; per-batch
    seeds of seed + offset had made seed 500's images those of seed 0 from the 501st on."""
    lo, hi = trainer.value_range
    seeds = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    parts = [trainer.generate(min(batch_size, n - i), seed=int(torch.randint(2**62, (), generator=seeds))).cpu()
             for i in range(0, n, batch_size)]
    return ((torch.cat(parts) - lo) / (hi - lo)).clamp(0, 1)


def evaluate(run_dir: Union[str, Path], *, n: Optional[int] = None, data=None, device: Optional[str] = None,
             seed: int = 12345, nll_samples: int = 100, write: bool = True) -> Dict[str, float]:
    """The run's metrics (docs/api.md's table says what each means). n: images to generate
    (default: as many as the real training images)."""
    if n is not None and n < 2:
        raise ValueError(f"n must be at least 2 generated images (FID needs 2 to fit a covariance), got {n}")
    if nll_samples < 1:
        raise ValueError(f"nll_samples must be at least 1 (importance samples of z per held-out image), got {nll_samples}")
    run_dir = Path(run_dir)
    trainer = load_run(run_dir, device=device)
    real = RealData(trainer, data)
    # The metrics of generated images stand on a classifier trained on the labels; a VAE's
    # likelihoods need none, so unlabelled data still gives a VAE run those.
    labelled = real.num_classes >= 2
    if not labelled and trainer.kind == "gan":
        real.require_classes("the metrics of generated images stand on a classifier trained on them")
    if not labelled:
        if n is not None:
            warnings.warn(f"n={n} is not used: without class labels no images are generated", stacklevel=2)
        n = 0
    elif n is None:
        n = len(real.train_images)
    results = {"kind": trainer.kind, "step": trainer.step, "data": real.source, "generated": n,
               "real_train": len(real.train_images), "real_held_out": len(real.held_images)}
    if labelled:
        results.update(_sample_metrics(run_dir, trainer, real, n, seed))
    else:
        warnings.warn(f"{real.source} has no class labels: only the held-out likelihoods are measured (the metrics "
                      "of generated images stand on a classifier trained on the labels)", stacklevel=2)
    if trainer.kind == "vae":
        likelihood = vae_likelihood(trainer.model, real.held_images.to(trainer.device),
                                    recon_loss=trainer.config.recon_loss, samples=nll_samples)
        results.update({f"held_out_{k}": v for k, v in likelihood.items()})
    if write:
        out = run_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(results, indent=2))
        (out / "metrics.md").write_text(format_table(results))
    return results


def _sample_metrics(run_dir: Path, trainer: _Trainer, real: RealData, n: int, seed: int) -> Dict[str, float]:
    """The classifier-based metrics of n generated images, beside those of the real held-out ones."""
    classifier, test_accuracy = run_classifier(run_dir, real)
    _warn_if_weak(test_accuracy, real.num_classes)
    fake = generate_unit(trainer, n, seed=seed)
    f_train, _ = features_and_probs(classifier, real.train_images)
    f_held, p_held = features_and_probs(classifier, real.held_images)
    f_fake, p_fake = features_and_probs(classifier, fake)
    pseudo = p_fake.argmax(1)
    coverage, class_kl = class_coverage(pseudo, real.num_classes)
    kid, kid_std = kernel_distance(f_fake, f_train)
    score, score_std = inception_score(p_fake)
    cas_model = train_classifier(fake, pseudo, real.num_classes)
    m = min(n, len(f_held))  # the matched size: the held-out count, or n when fewer are generated
    # Fewer than all held-out images: a seeded random m of them, not the first m (an image
    # folder loads class by class, so the first m would leave classes out of the reference).
    held = (torch.randperm(len(f_held), generator=torch.Generator().manual_seed(seed))[:m] if m < len(f_held)
            else slice(None))
    return {
        "matched": m,
        # FID is biased upward at small sample sizes: the real reference (the held-out images)
        # is compared with as many generated images (m), besides the FID of all n.
        "fid": frechet_distance(f_fake, f_train), "fid_matched": frechet_distance(f_fake[:m], f_train),
        "fid_real_held_out": frechet_distance(f_held[held], f_train),
        "kid": kid, "kid_std": kid_std, "kid_real_held_out": kernel_distance(f_held, f_train)[0],
        # The Inception Score grows with the size of its splits: the real reference is set
        # against as many generated images, besides the score of all n.
        "inception_score": score, "inception_score_std": score_std,
        "inception_score_matched": inception_score(p_fake[:m])[0],
        "inception_score_real_held_out": inception_score(p_held[held])[0],
        "class_coverage": coverage, "class_kl": class_kl,
        "cas": accuracy(cas_model, real.held_images, real.held_labels), "classifier_accuracy": test_accuracy,
    }


def _warn_if_weak(accuracy: float, num_classes: int) -> None:
    """Every metric here reads the classifier's features or labels: one that is not even
    halfway from chance to perfect on the real held-out images (too few images to train on)
    makes them say little about the samples. (NaN, no held-out images: no warning.)"""
    chance = 1 / num_classes
    if accuracy < (chance + 1) / 2:
        warnings.warn(f"the evaluation classifier reaches {accuracy:.0%} on the real held-out images (chance "
                      f"{chance:.0%}): FID, KID, IS, coverage and CAS, all computed from it, say little about the "
                      "samples; evaluate on more images", RuntimeWarning, stacklevel=3)


_ROWS = [  # (key, label, the real-data reference it is read against)
    ("fid", "FID, all generated images vs real train (classifier features)", None),
    ("fid_matched", "FID, {matched} generated images (as many as the real column's)", "fid_real_held_out"),
    ("kid", "KID", "kid_real_held_out"),
    ("inception_score", "Inception Score (classifier), all generated images", None),
    ("inception_score_matched", "Inception Score, {matched} generated images (as many as the real column's)",
     "inception_score_real_held_out"),
    ("class_coverage", "class coverage", None),
    ("class_kl", "class KL to uniform (nats)", None),
    ("cas", "CAS: accuracy on real held-out of a classifier trained on samples", "classifier_accuracy"),
    ("held_out_neg_elbo", "held-out -ELBO (nats/image)", None),
    ("held_out_nll", "held-out NLL, importance-sampled (nats/image)", None),
]


def format_table(results: Dict[str, float]) -> str:
    """A Markdown table: each metric of the generated images beside the same metric of the
    real held-out images (about what a perfect generator would score: FID and IS at the
    same sample size; KID is unbiased)."""
    lines = [f"{results['kind'].upper()} run at step {results['step']}, {results['generated']} generated images, "
             f"data {results['data']} ({results['real_train']} train / {results['real_held_out']} held out)", "",
             "| metric | generated | real held-out |", "|---|---:|---:|"]
    for key, label, reference in _ROWS:
        if key in results:
            ref = f"{results[reference]:.4g}" if reference else ""
            # (metrics.json written before the "matched" count: the same rule from its sizes)
            matched = results.get("matched", min(results["generated"], results["real_held_out"]))
            lines.append(f"| {label.format(matched=matched)} | {results[key]:.4g} | {ref} |")
    return "\n".join(lines) + "\n"
