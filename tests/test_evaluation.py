"""Evaluation: each metric against an independent formula or a known case (FID of a set
with itself is 0, of a shifted set the shift squared, SciPy's sqrtm formula on random
features; KID against a direct MMD; IS and coverage on one-hot extremes; a VAE whose
posterior is its prior has NLL = -ELBO exactly); then a whole run evaluated, and
samples written and read back with their labels."""

import json
import math
import types
import warnings

import numpy as np
import pytest
import torch

from aigc_fast import data as data_lib
from aigc_fast.evaluation import (class_coverage, evaluate, frechet_distance, inception_score, kernel_distance,
                                  vae_likelihood)
from aigc_fast.models import ConvVAE, MLPVAE
from aigc_fast.sampling import sample_run, write_samples
from aigc_fast.train import GANConfig, GANTrainer, VAEConfig, VAETrainer, load_run


def feats(n, d=8, seed=0, shift=0.0, scale=1.0):
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(100)) / d ** 0.5 + torch.eye(d)  # one distribution
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.double()) * scale + shift


def test_frechet_distance_known_cases():
    a = feats(500)
    assert abs(frechet_distance(a, a)) < 1e-9
    shift = torch.arange(8, dtype=torch.float64) / 4
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    x, y = torch.randn(400, 1, dtype=torch.float64), 3 * torch.randn(300, 1, dtype=torch.float64) + 2
    expected = (x.mean() - y.mean()) ** 2 + (x.std() - y.std()) ** 2  # 1-d: (μ1-μ2)² + (σ1-σ2)²
    assert frechet_distance(x, y) == pytest.approx(float(expected), rel=1e-9)


def test_frechet_distance_matches_the_scipy_formula():
    linalg = pytest.importorskip("scipy.linalg")
    a, b = feats(600, seed=1).numpy(), feats(700, seed=2, shift=0.3, scale=1.5).numpy()
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real  # pytorch-fid's formula
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-7)


def test_kernel_distance_is_the_unbiased_mmd():
    a, b = feats(60, seed=3), feats(60, seed=4, shift=1.0)
    mean, _ = kernel_distance(a, b, subsets=1, subset_size=60)  # a whole-set "subset": order does not matter
    k = lambda x, y: (x @ y.T / 8 + 1) ** 3
    m = 60
    direct = ((k(a, a).sum() - k(a, a).trace()) + (k(b, b).sum() - k(b, b).trace())) / (m * (m - 1)) \
        - 2 * k(a, b).mean()
    assert mean == pytest.approx(float(direct), rel=1e-10)
    same, same_std = kernel_distance(feats(400, seed=5), feats(400, seed=6), subset_size=200)
    far, _ = kernel_distance(feats(400, seed=5), feats(400, seed=6, shift=2.0), subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3 and far > 100 * abs(same)


def test_inception_score_and_coverage_extremes():
    confident = torch.eye(10)[torch.arange(1000) % 10]
    assert inception_score(confident, splits=1)[0] == pytest.approx(10, rel=1e-9)
    ordered = torch.eye(10)[torch.arange(1000) // 100]  # sorted by class, as datasets often are
    assert inception_score(ordered, splits=1)[0] == pytest.approx(10, rel=1e-9)
    assert inception_score(ordered)[0] > 9  # splits of a shuffle, not one class per split (which scores 1)
    assert inception_score(torch.eye(10)[torch.zeros(1000, dtype=torch.long)])[0] == pytest.approx(1)
    assert inception_score(torch.full((1000, 10), 0.1))[0] == pytest.approx(1)
    # Fewer rows than 2 * splits: fewer splits, none of one row (which would score 1).
    few = torch.eye(10)[torch.arange(6) % 2]  # three of each class: one pair of 2 at least mixes, scoring 2
    assert inception_score(few, splits=10) == inception_score(few, splits=3)
    assert inception_score(few, splits=10)[0] > 1.3
    with pytest.raises(ValueError, match="at least 2 samples"):
        inception_score(few[:1])
    # Splits of near-equal size: chunk() split 91 rows into 10 x 9 and a last split of one.
    spread = torch.eye(10)[torch.arange(91) % 10]
    assert inception_score(spread)[0] > inception_score(spread[:90])[0] - 0.1
    assert class_coverage(torch.arange(1000) % 10, 10) == pytest.approx((1.0, 0.0))
    assert class_coverage(torch.zeros(1000, dtype=torch.long), 10) == pytest.approx((0.1, math.log(10)))


def test_vae_nll_equals_the_elbo_when_the_posterior_is_the_prior():
    class PriorVAE(torch.nn.Module):  # q(z|x) = p(z), p(x|z) independent of z: log p(x) is exact
        def __init__(self):
            super().__init__()
            self.logits = torch.linspace(-2, 2, 16)

        def encode(self, x):
            return torch.zeros(x.shape[0], 3), torch.zeros(x.shape[0], 3)

        def decode(self, z):
            return self.logits.expand(z.shape[0], 16)

    x = torch.rand(10, 1, 4, 4)
    r = vae_likelihood(PriorVAE(), x, samples=7)
    exact = torch.nn.functional.binary_cross_entropy_with_logits(PriorVAE().logits.expand(10, 16), x.view(10, 16),
                                                                 reduction="sum").item() / 10
    assert r["kl"] == pytest.approx(0, abs=1e-12)
    assert r["nll"] == pytest.approx(exact, rel=1e-6) and r["neg_elbo"] == pytest.approx(exact, rel=1e-6)


def test_importance_sampling_tightens_the_bound():
    torch.manual_seed(0)
    model = MLPVAE(64, 32, 4)
    x = torch.rand(50, 64)
    r = vae_likelihood(model, x, samples=200)
    assert r["nll"] < r["neg_elbo"] and r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"])


def test_likelihood_runs_in_the_models_dtype():
    torch.manual_seed(0)
    model, x = MLPVAE(16, 8, 3), torch.rand(6, 16)
    r32 = vae_likelihood(model, x, samples=20)
    r64 = vae_likelihood(model.double(), x.double(), samples=20)  # float32 images were cast to float
    for name in r32:
        assert r64[name] == pytest.approx(r32[name], rel=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(samples=0), "samples must be an integer >= 1"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(images=torch.zeros(0, 16)), "non-empty batch"),
    (dict(images=torch.full((2, 16), 255, dtype=torch.uint8)), "images must be float"),
    (dict(images=torch.full((2, 16), 3.0)), r"images must lie in \[0, 1\].*from 3 to 3"),
])
def test_likelihood_refuses_bad_arguments(kwargs, match):
    args = dict(images=torch.rand(2, 16))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        vae_likelihood(MLPVAE(16, 8, 3), **args)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("PIL")
    out = tmp_path_factory.mktemp("digits-gan")
    config = GANConfig(out_dir=str(out), data="digits", image_size=16, channels=1, nz=16, ngf=8, ndf=8,
                       batch_size=32, max_steps=4, holdout=0.2, progress=False, sample_every=1000)
    GANTrainer(config).fit()
    return out


def test_evaluate_a_run(digits_run):
    results = evaluate(digits_run, n=300)
    assert results["classifier_accuracy"] > 0.85  # the feature space knows the digits
    assert results["real_held_out"] == round(1797 * 0.2) and results["generated"] == 300
    assert results["fid"] > 5 * results["fid_real_held_out"]  # 4 steps of training: far from real
    assert 0 <= results["class_coverage"] <= 1 and 1 <= results["inception_score"] <= 10
    # The matched rows: as many images on both sides, here all 300 generated against 300 of the 359 held out.
    assert results["matched"] == 300 and 1 <= results["inception_score_matched"] <= 10
    table = (digits_run / "eval" / "metrics.md").read_text()
    assert "| FID, 300 generated images (as many as the real column's) |" in table
    assert "| Inception Score, 300 generated images (as many as the real column's) |" in table
    assert json.loads((digits_run / "eval" / "metrics.json").read_text())["fid"] == results["fid"]
    assert "| FID" in (digits_run / "eval" / "metrics.md").read_text()
    cached = (digits_run / "eval" / "classifier.pt").stat().st_mtime
    assert evaluate(digits_run, n=300, write=False)["fid"] == results["fid"]  # seeded; classifier reused
    assert (digits_run / "eval" / "classifier.pt").stat().st_mtime == cached
    cache = digits_run / "eval" / "classifier.pt"
    for damage in (cache.read_bytes()[:5000], b"garbage"):  # a damaged cache is trained again, not an error
        cache.write_bytes(damage)
        with pytest.warns(UserWarning, match="classifier cache cannot be read: .*classifier.pt is (not a|damaged)"
                                             ".*; training the classifier again"):
            again = evaluate(digits_run, n=300, write=False)
    assert again["classifier_accuracy"] > 0.85 and torch.load(cache, weights_only=True)["key"]["data"] == "digits"


def test_a_weak_evaluation_classifier_is_reported():
    from aigc_fast.evaluation.run import _warn_if_weak

    with pytest.warns(RuntimeWarning, match="reaches 40% on the real held-out images \\(chance 10%\\)"):
        _warn_if_weak(0.4, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_weak(0.6, 10)  # over halfway from chance (10%) to perfect
        _warn_if_weak(float("nan"), 10)  # no held-out images: nothing to say


def test_evaluate_refuses_too_few_images_before_any_work(digits_run):
    for n in (0, 1, -5):
        with pytest.raises(ValueError, match="n must be at least 2"):
            evaluate(digits_run, n=n, write=False)
    with pytest.raises(ValueError, match="nll_samples must be at least 1"):
        evaluate(digits_run, n=300, nll_samples=0, write=False)


def test_balanced_sampling_of_a_run_without_held_out_images(tmp_path, monkeypatch):
    """Balanced sampling needs the classifier, not held-out images: a holdout=0 run samples."""
    import aigc_fast.evaluation.run as run

    pytest.importorskip("sklearn")
    out = tmp_path / "gan"
    GANTrainer(GANConfig(out_dir=str(out), data="digits", image_size=16, channels=1, nz=16, ngf=8, ndf=8,
                         batch_size=32, max_steps=1, holdout=0.0, progress=False, sample_every=1000)).fit()
    real = data_lib.load("digits", image_size=16, channels=1, kind="vae").images[:400]
    monkeypatch.setattr(run, "generate_unit", lambda trainer, n, seed=0: real[torch.randperm(400)[:n]])
    written = sample_run(out, 20, tmp_path / "balanced", balanced=True)
    assert sorted(np.load(written / "samples.npz")["labels"].tolist()) == sorted(list(range(10)) * 2)
    with pytest.raises(ValueError, match="holdout=0"):
        evaluate(out, n=20, write=False)  # the metrics do need them


def test_balanced_sampling_of_a_run_trained_in_memory(tmp_path, monkeypatch):
    """A run fit on arrays records no data: balanced sampling takes data= for its classifier
    (as evaluate does), and says so when it is missing."""
    import aigc_fast.evaluation.run as run

    pytest.importorskip("sklearn")
    images, labels = data_lib.load_digits()
    out = tmp_path / "gan"
    GANTrainer(GANConfig(out_dir=str(out), image_size=16, channels=1, nz=16, ngf=8, ndf=8, batch_size=32,
                         max_steps=1, holdout=0.0, progress=False, sample_every=1000)).fit(images)
    real = data_lib.load("digits", image_size=16, channels=1, kind="vae").images[:400]
    monkeypatch.setattr(run, "generate_unit", lambda trainer, n, seed=0: real[torch.randperm(400)[:n]])
    with pytest.raises(ValueError, match="pass data="):
        sample_run(out, 20, tmp_path / "balanced", balanced=True)
    written = sample_run(out, 20, tmp_path / "balanced", balanced=True, data=(images, labels))
    assert sorted(np.load(written / "samples.npz")["labels"].tolist()) == sorted(list(range(10)) * 2)


def test_real_data_from_an_images_labels_pair(digits_run):
    """A run trained on arrays in memory is evaluated against an (images, labels) pair: the
    same split as the named set, and a short name for results and the classifier cache."""
    from aigc_fast.evaluation.run import RealData
    from aigc_fast.train import load_run

    trainer = load_run(digits_run)
    named, paired = RealData(trainer, "digits"), RealData(trainer, data_lib.load_digits())
    for a, b in [(named.train_images, paired.train_images), (named.held_labels, paired.held_labels)]:
        assert torch.equal(a, b)
    assert paired.source.startswith("in-memory images [1797, 1, 8, 8] with labels (sha1 ") and len(paired.source) < 80
    images, labels = data_lib.load_digits()
    assert RealData(trainer, (images.flip(0), labels.flip(0))).source != paired.source  # other bytes, other key
    with pytest.raises(ValueError, match="1797 images but 3 labels"):
        data_lib.load((images, labels[:3]), image_size=8)
    # Other data than the run's: its split would not be the run's held-out one.
    with pytest.raises(ValueError, match=r"holds 100 images, the run trained on 1797 \(held-out ones included\)"):
        RealData(trainer, (images[:100], labels[:100]))


def test_neg_elbo_averages_over_every_sample_drawn():
    """-ELBO's reconstruction term is the mean of log p(x|z) over all `samples` z, not the
    first z alone (one z made it shift with --nll-samples)."""
    torch.manual_seed(1)
    model = MLPVAE(16, 8, 3)
    x = torch.rand(6, 16)
    r = vae_likelihood(model, x, samples=5, batch_size=6, seed=7)
    with torch.no_grad():
        mu, logvar = (t.double() for t in model.encode(x))
        eps = torch.randn((5,) + mu.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        logits = model.decode((mu + (0.5 * logvar).exp() * eps).flatten(0, 1).float()).double().view(5, 6, 16)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x.double().expand(5, 6, 16),
                                                                   reduction="none").sum(-1)  # [K, N]
    assert r["recon"] == pytest.approx(bce.mean().item(), rel=1e-9)


@pytest.mark.parametrize("recon_loss", ["bce", "mse"])
def test_nll_is_the_importance_weighted_bound_written_out(recon_loss):
    """NLL_K = -log mean_k p(x|z_k) p(z_k) / q(z_k|x), computed here from the same noise with
    the densities written out: the ratio p(z)/q(z|x) is what the other tests cannot see (it
    is 1 for a posterior equal to the prior, and the bound stays below -ELBO without it)."""
    torch.manual_seed(2)
    model = MLPVAE(16, 8, 3)
    x = torch.rand(6, 16)
    r = vae_likelihood(model, x, recon_loss=recon_loss, samples=5, batch_size=6, seed=11)
    with torch.no_grad():
        mu, logvar = (t.double() for t in model.encode(x))
        eps = torch.randn((5,) + mu.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
        z = mu + (0.5 * logvar).exp() * eps
        logits = model.decode(z.flatten(0, 1).float()).double().view(5, 6, 16)
        target = x.double().expand(5, 6, 16)
        if recon_loss == "bce":
            log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
        else:  # the Gaussian of variance 1/2: density exp(-(x - m)^2) / sqrt(pi) per pixel
            log_px_z = (-(logits - target) ** 2 - 0.5 * math.log(math.pi)).sum(-1)
        log_2pi = math.log(2 * math.pi)
        log_pz = (-0.5 * (log_2pi + z ** 2)).sum(-1)
        log_qz = (-0.5 * (log_2pi + logvar + eps ** 2)).sum(-1)  # (z - mu)^2 / var = eps^2
        log_w = log_px_z + log_pz - log_qz
        nll = -(log_w.logsumexp(0) - math.log(5)).mean()
    assert r["nll"] == pytest.approx(nll.item(), rel=1e-9)


def test_generated_sets_of_different_seeds_share_no_images(digits_run):
    from aigc_fast.evaluation.run import generate_unit
    from aigc_fast.train import load_run

    trainer = load_run(digits_run)
    first, other = generate_unit(trainer, 40, seed=0, batch_size=20), generate_unit(trainer, 40, seed=20, batch_size=20)
    assert not any(torch.equal(a, b) for a in first for b in other)  # seed + offset per batch had shared 20
    assert torch.equal(generate_unit(trainer, 40, seed=0, batch_size=20), first)  # and a seed still reproduces


def test_samples_round_trip_with_labels(tmp_path):
    pytest.importorskip("PIL")
    images, labels = torch.rand(12, 1, 8, 8), torch.arange(12) % 3
    write_samples(images, tmp_path, labels)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [".written-by-aigc-fast", "class_000",
                                                                       "class_001", "class_002"]
    for source in (tmp_path / "images", tmp_path / "samples.npz"):
        loaded = data_lib.load(source, image_size=8, channels=1, kind="vae")
        assert sorted(loaded.labels.tolist()) == sorted(labels.tolist())
    back = np.load(tmp_path / "samples.npz")["images"]
    assert back.dtype == np.uint8 and np.abs(back / 255 - images.numpy()).max() <= 0.5 / 255 + 1e-6
    assert (tmp_path / "grid.png").is_file()


def test_balanced_sampling(digits_run, tmp_path, monkeypatch):
    import aigc_fast.evaluation.run as run

    real = data_lib.load("digits", image_size=16, channels=1, kind="vae").images[:400]
    monkeypatch.setattr(run, "generate_unit", lambda trainer, n, seed=0: real[torch.randperm(400)[:n]])
    out = sample_run(digits_run, 50, tmp_path / "balanced", balanced=True)
    labels = np.load(out / "samples.npz")["labels"]
    assert np.bincount(labels).tolist() == [5] * 10
    monkeypatch.setattr(run, "generate_unit", lambda trainer, n, seed=0: torch.zeros(n, 1, 16, 16))
    with pytest.raises(ValueError, match="rarely generates them"):
        sample_run(digits_run, 50, tmp_path / "collapsed", balanced=True)


def test_spreads_use_numpys_1_over_n_convention():
    """The Inception Score's std over its splits, as the original code's np.std; KID's the same."""
    probs = torch.softmax(torch.randn(200, 10, generator=torch.Generator().manual_seed(1)) * 3, 1).double()
    mean, std = inception_score(probs, splits=4, seed=3)
    shuffled = probs[torch.randperm(200, generator=torch.Generator().manual_seed(3))].numpy()
    scores = [np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean()) for p in np.split(shuffled, 4)]
    assert mean == pytest.approx(np.mean(scores), rel=1e-12) and std == pytest.approx(np.std(scores), rel=1e-12)
    assert kernel_distance(feats(30, seed=1), feats(30, seed=2), subsets=5, subset_size=30)[1] == pytest.approx(0, abs=1e-12)


def test_features_that_are_not_finite_are_named():
    bad = feats(50)
    bad[3, 1] = float("nan")
    for metric in (frechet_distance, kernel_distance):
        with pytest.raises(ValueError, match="the second set's features hold NaN or inf"):
            metric(feats(50, seed=1), bad)


def test_the_matched_real_reference_is_a_random_part_of_the_held_out_images(digits_run):
    """Fewer images generated than held out: the real reference is as many held-out images,
    drawn at random, not the first ones (data sorted by class, as an image folder loads,
    had left a reference of two classes: IS 1.7 where a random part scores 3)."""
    images, labels = data_lib.load_digits()
    order = labels.argsort(stable=True)
    by_class = evaluate(digits_run, n=100, data=(images[order], labels[order]), write=False)
    as_is = evaluate(digits_run, n=100, data=(images, labels), write=False)
    assert by_class["matched"] == 100
    assert by_class["inception_score_real_held_out"] == pytest.approx(as_is["inception_score_real_held_out"], rel=0.25)
    assert by_class["fid_real_held_out"] < 2 * as_is["fid_real_held_out"]


def test_evaluate_a_vae_on_unlabelled_data_gives_its_likelihoods(tmp_path, digits_run):
    """One flat folder, a .npy: no class labels, so no classifier. A VAE's held-out
    likelihoods need none; a GAN's metrics all stand on the classifier, so it is refused."""
    pytest.importorskip("sklearn")
    images = data_lib.load_digits()[0][:300]
    np.save(tmp_path / "unlabelled.npy", images.numpy())
    out = tmp_path / "vae"
    VAETrainer(VAEConfig(out_dir=str(out), data=str(tmp_path / "unlabelled.npy"), model="mlp", image_size=8,
                         channels=1, batch_size=32, max_steps=2, holdout=0.2, progress=False, sample_every=1000)).fit()
    with pytest.warns(UserWarning, match="no class labels: only the held-out likelihoods"):
        results = evaluate(out, nll_samples=4)
    assert results["real_held_out"] == 60 and results["generated"] == 0 and "fid" not in results
    assert results["held_out_nll"] <= results["held_out_neg_elbo"] + 1e-6
    assert "held-out NLL" in (out / "eval" / "metrics.md").read_text()
    with pytest.warns(UserWarning, match="n=5 is not used: without class labels"), \
            pytest.warns(UserWarning, match="only the held-out likelihoods"):
        evaluate(out, n=5, nll_samples=2, write=False)
    one_label = (images, torch.full((300,), 3))  # one distinct label, though not 0: still no classes
    with pytest.warns(UserWarning, match="no class labels: only the held-out likelihoods"):
        assert "fid" not in evaluate(out, data=one_label, nll_samples=2, write=False)
    with pytest.raises(ValueError, match="has no class labels .* stand on a classifier"):
        evaluate(digits_run, data=data_lib.load_digits()[0], write=False)  # the run's 1797 images, no labels


def test_class_coverage_counts_classes_with_half_their_fair_share():
    """A class with at least half its fair share (n / 2K) of the samples counts as covered."""
    labels = torch.tensor([0] * 70 + [1] * 30)  # fair share 50: 30 is over half of it
    assert class_coverage(labels, 2)[0] == 1.0
    assert class_coverage(torch.tensor([0] * 80 + [1] * 20), 2)[0] == 0.5  # 20 is under half of it


def test_vae_likelihood_runs_in_eval_mode_and_leaves_the_model_alone():
    """A BatchNorm VAE's held-out likelihood uses its running statistics, whatever mode it is in, and updates none."""
    torch.manual_seed(0)
    model = ConvVAE(4, channels=1, image_size=16, base=4)
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    in_training = vae_likelihood(model, x, samples=3, batch_size=3)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert vae_likelihood(model.eval(), x, samples=3, batch_size=3) == pytest.approx(in_training, rel=1e-6)


def test_the_evaluation_classifier_is_reproducible():
    """train_classifier is seeded: the same data gives the same classifier (metrics reproduce run to run)."""
    from aigc_fast.evaluation.classifier import train_classifier

    images = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 2
    a = train_classifier(images, labels, 2, epochs=1, batch_size=8)
    torch.rand(3)  # the global RNG moved on between the calls, as it does in a session
    b = train_classifier(images, labels, 2, epochs=1, batch_size=8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _real(source, seed):
    images = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(48) % 2
    return types.SimpleNamespace(source=source, train_images=images[:32], train_labels=labels[:32],
                                 held_images=images[32:], held_labels=labels[32:], num_classes=2)


def test_the_cached_classifier_is_reused_only_for_the_same_data(tmp_path):
    """RUN_DIR/eval/classifier.pt serves the data it was trained on; other data trains (and caches) a new one."""
    from aigc_fast.evaluation.run import run_classifier

    first, _ = run_classifier(tmp_path, _real("a", 0), epochs=1)
    again, _ = run_classifier(tmp_path, _real("a", 0), epochs=1)
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), again.state_dict().values()))
    other, _ = run_classifier(tmp_path, _real("b", 1), epochs=1)
    assert not all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), other.state_dict().values()))
    assert torch.load(tmp_path / "eval" / "classifier.pt", weights_only=True)["key"]["data"] == "b"


def tiny_gan_run(tmp_path):
    GANTrainer(GANConfig(out_dir=str(tmp_path), image_size=16, channels=1, nz=8, ngf=4, ndf=4, batch_size=8,
                         max_steps=1, num_samples=4, progress=False, holdout=0.0, sample_every=1000)
               ).fit(torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    return tmp_path


def test_generate_unit_maps_a_gans_images_to_0_1(tmp_path):
    """A GAN's [-1, 1] images reach the classifier (and samples.npz) as (x + 1) / 2, not clipped at 0."""
    from aigc_fast.evaluation.run import generate_unit

    trainer = load_run(tiny_gan_run(tmp_path))
    unit = generate_unit(trainer, 6, seed=3, batch_size=6)
    batch_seed = int(torch.randint(2**62, (), generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(unit, (trainer.generate(6, seed=batch_seed).cpu() + 1) / 2)


def test_sample_run_uses_its_seed(tmp_path):
    """sample_run(seed=...) picks the images: one seed reproduces them, another gives others."""
    run = tiny_gan_run(tmp_path / "run")
    read = lambda out: np.load(out / "samples.npz")["images"]  # noqa: E731
    a = read(sample_run(run, 4, tmp_path / "a", seed=0))
    assert np.array_equal(a, read(sample_run(run, 4, tmp_path / "a2", seed=0)))
    assert not np.array_equal(a, read(sample_run(run, 4, tmp_path / "b", seed=1)))


def test_evaluate_measures_an_mse_vae_with_its_own_likelihood(tmp_path):
    """An mse VAE's held-out -ELBO and NLL are those of its Gaussian decoder, not the BCE's."""
    from aigc_fast.evaluation.run import RealData

    np.save(tmp_path / "unlabelled.npy", (torch.rand(60, 8, 8, generator=torch.Generator().manual_seed(0)) * 255)
            .to(torch.uint8).numpy())
    out = tmp_path / "vae"
    VAETrainer(VAEConfig(out_dir=str(out), data=str(tmp_path / "unlabelled.npy"), model="mlp", image_size=8,
                         recon_loss="mse", latent_dim=2, batch_size=16, max_steps=2, holdout=0.2, progress=False,
                         sample_every=1000)).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no class labels: only the likelihoods
        results = evaluate(out, nll_samples=3, write=False)
    trainer = load_run(out)
    expected = vae_likelihood(trainer.model, RealData(trainer).held_images, recon_loss="mse", samples=3)
    assert results["held_out_nll"] == pytest.approx(expected["nll"], rel=1e-9)
    assert results["held_out_neg_elbo"] == pytest.approx(expected["neg_elbo"], rel=1e-9)


def test_image_grids_are_square_by_default_and_clip_out_of_range_values():
    """make_grid lays n images out ceil(sqrt(n)) to a row; values outside the range are
    clipped to 0 and 255, not wrapped."""
    from aigc_fast.images import make_grid, to_uint8

    grid = make_grid(torch.zeros(10, 1, 4, 4), padding=2)  # 4 columns, 3 rows
    assert grid.shape == (3 * 6 + 2, 4 * 6 + 2, 1)
    assert to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])).tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(torch.tensor([-0.5, 1.5]), (0.0, 1.0)).tolist() == [0, 255]
