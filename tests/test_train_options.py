"""Trainer options: bf16/fp16 mixed precision (fp16 with a GradScaler whose state is
checkpointed), channels_last (the same losses as NCHW), torch.compile (the same losses as
eager), deterministic mode (two runs bit-identical), the fixed held-out split."""

import json
import warnings

import pytest
import torch

from aigc_fast.data import holdout_split
from aigc_fast.train import GANConfig, GANTrainer, VAEConfig, VAETrainer, load_checkpoint, load_run


def gan(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), image_size=16, channels=1, nz=8, ngf=4, ndf=4, batch_size=8, epochs=1,
                log_every=1, sample_every=1000, num_samples=4, progress=False, holdout=0.0, precision="fp32",
                channels_last=False)
    return GANTrainer(GANConfig(**{**base, **kw}))


def vae(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), image_size=16, channels=1, latent_dim=4, base=8, batch_size=8, epochs=1,
                log_every=1, sample_every=1000, num_samples=4, progress=False, holdout=0.0, precision="fp32",
                channels_last=False)
    return VAETrainer(VAEConfig(**{**base, **kw}))


def images(n=32):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def losses(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("make", [gan, vae])
def test_mixed_precision_trains_near_fp32(tmp_path, make, precision):
    make(tmp_path / "fp32").fit(images())
    if precision == "fp16":  # on a CPU: said to be slow, still trained right
        with pytest.warns(RuntimeWarning, match="precision='fp16' on a CPU"):
            trainer = make(tmp_path / precision, precision=precision)
    else:
        trainer = make(tmp_path / precision, precision=precision)
    trainer.fit(images())
    for low, full in zip(losses(tmp_path / precision), losses(tmp_path / "fp32")):
        for name in full:
            if name not in ("step", "epoch", "images_per_s"):
                assert low[name] == pytest.approx(full[name], rel=0.05, abs=0.05), name
    scaler = load_checkpoint(tmp_path / precision / "checkpoint.pt")["scaler"]
    assert bool(scaler) == (precision == "fp16")  # fp16's loss scale is part of the state


@pytest.mark.parametrize("make", [gan, vae])
def test_a_loop_of_train_step_calls_trains_in_fp16(tmp_path, make):
    # train_step is a whole step: fit is not needed to update the GradScaler between steps
    # (the second call raised "step() has already been called since the last update()").
    with pytest.warns(RuntimeWarning, match="precision='fp16' on a CPU"):
        trainer = make(tmp_path, precision="fp16")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows at first
    batch = images(8) * 2 - 1 if make is gan else images(8)
    for _ in range(3):
        assert all(map(torch.isfinite, map(torch.tensor, trainer.train_step(batch).values())))
    assert trainer.scaler.get_scale() < 2.0**40  # the overflowing steps lowered the scale


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(tmp_path, monkeypatch):
    import aigc_fast._info as info
    from aigc_fast.train.config import resolve_precision

    monkeypatch.setattr(info, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    monkeypatch.setattr(info, "cpu_has_native_bf16", lambda: True)
    trainer = gan(tmp_path, precision="auto")
    assert trainer.config.precision == "bf16"  # resolved once: config.json records what ran
    assert GANConfig().channels_last  # the faster layout by default


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx avx2 fma", "AVX2"),
    ("sse2 avx2 avx512f avx512bw avx512_bf16", "AVX-512, AVX512-BF16"),
    ("sse2 avx2 avx512f amx_bf16 amx_tile avx512_bf16", "AVX-512, AMX-BF16, AVX512-BF16"),
    ("", None),
])
def test_benchmark_rows_name_the_vector_isa(monkeypatch, flags, expected):
    """Two CPUs may share a model name ("AMD EPYC") but not what their numbers can reach."""
    import aigc_fast._info as info
    from aigc_fast import benchmark

    monkeypatch.setattr(info, "cpu_info", lambda field: {"flags": flags, "model name": "AMD EPYC"}[field])
    monkeypatch.setattr(benchmark, "cpu_info", info.cpu_info)
    assert info.cpu_vector_isa() == expected
    assert benchmark.machine_facts()["cpu"] == ("AMD EPYC" if expected is None else f"AMD EPYC ({expected})")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        GANConfig(precision="fp8")


@pytest.mark.parametrize("make", [gan, vae])
def test_channels_last_gives_the_nchw_losses(tmp_path, make):
    make(tmp_path / "nchw").fit(images())
    trainer = make(tmp_path / "cl", channels_last=True)
    trainer.fit(images())
    conv = next(m for m in trainer.modules().values() if isinstance(m, torch.nn.Module))
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in conv.parameters())
    for a, b in zip(losses(tmp_path / "cl"), losses(tmp_path / "nchw")):
        for name in b:
            if name not in ("step", "epoch", "images_per_s"):
                assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-4), name


def test_compile_gives_the_eager_losses(tmp_path):
    torch._dynamo.reset()
    vae(tmp_path / "eager", max_steps=3).fit(images())
    vae(tmp_path / "compiled", max_steps=3, compile=True).fit(images())
    for a, b in zip(losses(tmp_path / "compiled"), losses(tmp_path / "eager")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_deterministic_runs_are_bit_identical(tmp_path):
    try:
        runs = []
        for name in ("a", "b"):
            trainer = gan(tmp_path / name, deterministic=True)
            trainer.fit(images())
            assert torch.are_deterministic_algorithms_enabled()
            runs.append(trainer.G.state_dict())
        assert all(torch.equal(x, y) for x, y in zip(runs[0].values(), runs[1].values()))
    finally:
        torch.use_deterministic_algorithms(False)


def test_holdout_split_is_fixed_and_kept_out_of_training(tmp_path):
    train, held = holdout_split(100, 0.1)
    assert len(held) == 10 and len(train) == 90 and not set(train.tolist()) & set(held.tolist())
    assert torch.equal(holdout_split(100, 0.1)[1], held)  # whatever the run's seed
    seen = []
    trainer = gan(tmp_path, holdout=0.25, seed=3)
    trainer.train_step = lambda x: seen.append(x.clone()) or {"d_loss": 1.0, "g_loss": 1.0}
    data = torch.arange(32, dtype=torch.float32).view(32, 1, 1, 1).expand(32, 1, 16, 16) / 31
    trainer.fit(data)
    trained = {round((v + 1) / 2 * 31) for v in torch.cat(seen)[:, 0, 0, 0].tolist()}  # GAN range [-1, 1]
    _, held = holdout_split(32, 0.25)
    assert len(trained) == 24 and not trained & set(held.tolist())


def test_load_run_restores_the_trained_model_without_touching_the_rng(tmp_path):
    trainer = vae(tmp_path, max_steps=2)
    trainer.fit(images())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loaded = load_run(tmp_path)
    assert torch.equal(torch.get_rng_state(), before)
    assert loaded.step == 2 and isinstance(loaded, VAETrainer)
    assert torch.equal(loaded.generate(4, seed=1), trainer.generate(4, seed=1))


def test_cuda_graph_is_a_gpu_setting(tmp_path):
    """cuda_graph (on by default) replays steps on a GPU only: on the CPU the steps run
    eagerly and the optimizers are the plain fused ones; the flag round-trips the config
    and the CLI (--no-cuda-graph), and the benchmark refuses its graph providers here.
    (The graphed steps themselves: tests/test_cuda_train.py, on a GPU.)"""
    import argparse

    from aigc_fast import benchmark
    from aigc_fast.cli import _config_options

    trainer = gan(tmp_path)
    assert trainer.config.cuda_graph and not trainer.cuda_graph and trainer._graphed is None
    assert not trainer.opt_d.param_groups[0]["capturable"]
    metrics = trainer.train_step(images(8) * 2 - 1)
    assert set(metrics) == {"d_loss", "g_loss"} and all(isinstance(v, float) for v in metrics.values())
    assert GANConfig.from_json(GANConfig(cuda_graph=False).to_json()).cuda_graph is False
    parser = argparse.ArgumentParser()
    _config_options(parser, GANConfig)
    assert parser.parse_args(["--no-cuda-graph"]).cuda_graph is False
    with pytest.raises(ValueError, match="GPU only"):
        benchmark.make_step("dcgan28", "fused+graph", device="cpu")


def test_a_data_loader_whose_settings_fit_does_not_use_is_warned_about(tmp_path):
    """fit batches, shuffles and collates a DataLoader's dataset itself (seeded, for exact
    resumes): settings that ask for something else are named, not silently dropped."""
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset, WeightedRandomSampler

    trainer = vae(tmp_path, batch_size=16)
    data = TensorDataset(images(64), torch.zeros(64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer.dataset(DataLoader(data, batch_size=16, shuffle=True)) is data
    loader = DataLoader(data, batch_size=32, num_workers=2, collate_fn=lambda batch: batch)
    with pytest.warns(UserWarning, match=r"batch_size=32 \(the config's is 16\), collate_fn, num_workers=2 are not"):
        assert trainer.dataset(loader) is data
    for loader, named in ((DataLoader(data, batch_size=None), "batch_size=None is"),
                          (DataLoader(data, batch_sampler=BatchSampler(SequentialSampler(data), 16, False)),
                           "batch_sampler is"),
                          (DataLoader(data, batch_size=16, sampler=WeightedRandomSampler(torch.ones(64), 64)),
                           "sampler is")):
        with pytest.warns(UserWarning, match=f"its {named} not used"):
            trainer.dataset(loader)


def test_an_out_dir_that_takes_no_files_is_refused_before_the_data_loads(tmp_path, monkeypatch):
    """A read-only or another user's folder (root passes permission checks, so os.access
    stands in for one): refused by name before the data loads, not after, in torch's save."""
    import aigc_fast.train.config as config_module

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    monkeypatch.setattr(config_module.os, "access", lambda path, mode: not str(path).startswith(str(read_only)))
    trainer = GANTrainer(GANConfig(out_dir=str(read_only / "run"), data="no-such-set", progress=False))
    with pytest.raises(PermissionError, match=r"out_dir '.*read-only/run': cannot write in '.*read-only' .*--out-dir"):
        trainer.fit()  # (the data, a bad name, would have been the error after)
    assert not (read_only / "run").exists()
