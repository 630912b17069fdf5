"""The benchmark report: bench/report.py's tables, bandwidth column, CSV and chart from a
pytest-benchmark JSON file, and `aigc-fast bench --ops` end to end on one small case."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import aigc_fast
from aigc_fast import benchmark

ROOT = Path(__file__).resolve().parents[1]


def load_report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_benchmark(provider, median, pass_="fwd+bwd", **extra):
    return {"stats": {"median": median, "iqr": median / 10},
            "extra_info": {"op": "toy", "device": "cpu", "pass_": pass_, "size": "1M", "provider": provider, **extra}}


@pytest.fixture
def results(tmp_path):
    data = {"datetime": "2026-11-29T10:00:00", "machine_info": {"cpu": {"brand_raw": "Test CPU"}, "threads": 2,
                                                                  "gpu": None, "torch": "2.x"},
            "benchmarks": [fake_benchmark("fused", 0.004, bytes_moved=40_000_000, cpu_peak_bytes=2**20),
                           fake_benchmark("eager", 0.012, cpu_peak_bytes=2**21),
                           fake_benchmark("compile", 0.008),
                           fake_benchmark("copy", 0.002, bytes_moved=32_000_000),
                           fake_benchmark("fused", 0.001, pass_="fwd", bytes_moved=8_000_000)]}
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(data))
    return path


def test_table_speedups_and_bandwidth(results, capsys):
    load_report().main([str(results)])
    out = capsys.readouterr().out
    assert "Test CPU, 2 threads, GPU: none; torch 2.x; 2026-11-29" in out
    header, _, row = [line for line in out.splitlines() if line.startswith("|")][:3]
    cells = dict(zip(header.split(" | "), row.split(" | ")))
    assert cells["fused vs eager"] == "3.00x" and cells["fused vs compile"] == "2.00x"
    assert cells["fused / copy"] == "2.00"
    # 40 MB in 4 ms is 10 GB/s; the copy moved 32 MB in 2 ms: 16 GB/s of copy bandwidth.
    assert cells["GB/s fused / copy"] == "10.0 / 16.0 (62%)"
    assert "| 8.0 |" in out  # forward: no copy row, the fused bandwidth alone


def test_inputs_and_outputs_it_cannot_use_are_refused_before_any_table(results, tmp_path, capsys):
    """A file that is not JSON, JSON that pytest-benchmark did not write, and a --csv or
    --chart with no folder to go in (or that is a folder): argparse's error, no traceback,
    and nothing printed first."""
    (tmp_path / "steps.csv").write_text("date,cpu\n")
    (tmp_path / "other.json").write_text("{}")
    for argv, message in (([str(tmp_path / "steps.csv")], "is not a JSON file"),
                          ([str(tmp_path / "other.json")], "not what pytest-benchmark's --benchmark-json writes"),
                          ([str(results), "--csv", str(tmp_path / "no" / "ops.csv")], "--csv"),
                          ([str(results), "--chart", str(tmp_path)], "--chart")):
        with pytest.raises(SystemExit) as exited:
            load_report().main(argv)
        shown = capsys.readouterr()
        assert exited.value.code == 2 and message in shown.err and shown.out == ""


def test_csv(results, tmp_path):
    load_report().main([str(results), "--csv", str(tmp_path / "ops.csv")])
    rows = list(csv.DictReader((tmp_path / "ops.csv").read_text().splitlines()))
    assert len(rows) == 5 and {r["cpu"] for r in rows} == {"Test CPU"} and rows[0]["date"] == "2026-11-29"
    assert float(rows[0]["gb_per_s"]) == pytest.approx(10.0)


def test_chart(results, tmp_path):
    pytest.importorskip("matplotlib")
    load_report().main([str(results), "--chart", str(tmp_path / "ops.png")])
    assert (tmp_path / "ops.png").read_bytes()[:4] == b"\x89PNG"


def test_chart_rows_title_and_one_machine(results, tmp_path, monkeypatch):
    """Op rows forward+backward only, a training step's rows by setting; the machine in the
    title; files from two machines refused rather than merged into one chart."""
    report = load_report()
    drawn = {}
    monkeypatch.setattr(report, "comparison_chart", lambda labels, speedups, memory, path, title: drawn.update(
        labels=labels, speedups=speedups, title=title))
    data = json.loads(results.read_text())
    data["benchmarks"] += [fake_benchmark("fused", 0.03, pass_="bf16 channels_last", op="step vae28"),
                           fake_benchmark("eager", 0.06, pass_="bf16 channels_last", op="step vae28")]
    for b in data["benchmarks"][-2:]:
        b["extra_info"]["op"] = "step vae28"
    results.write_text(json.dumps(data))
    report.main([str(results), "--chart", str(tmp_path / "ops.png")])
    assert drawn["labels"] == ["toy 1M", "step vae28 1M bf16 channels_last"]
    assert drawn["speedups"] == {"fused": [3.0, 2.0], "compile": [1.5, None]}
    assert "Test CPU, 2 threads, torch 2.x, 2026-11-29" in drawn["title"]
    later = tmp_path / "later.json"
    later.write_text(json.dumps({**data, "datetime": "2026-11-30T09:00:00"}))
    report.main([str(results), str(later), "--chart", str(tmp_path / "days.png")])
    assert drawn["title"].endswith("2026-11-29 to 2026-11-30")
    other = tmp_path / "other.json"
    data["machine_info"]["cpu"]["brand_raw"] = "Another CPU"
    other.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="2 machines"):
        report.main([str(results), str(other), "--chart", str(tmp_path / "both.png")])


@pytest.mark.parametrize("option, value", [("--layouts", "channels-last"), ("--providers", "fused,fsued"),
                                           ("--workloads", "dcgan32"), ("--precision", "auto")])
def test_bench_refuses_unknown_choices(option, value, capsys):
    from aigc_fast import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["bench", option, value])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "usage: aigc-fast bench" in err
    assert f"argument {option}: " in err and "choose from" in err


def test_bench_refuses_a_repeated_choice(capsys):
    from aigc_fast import cli

    with pytest.raises(SystemExit) as stopped:  # two rows of one case: the table refused them after the timing
        cli.main(["bench", "--providers", "fused,eager,fused"])
    assert stopped.value.code == 2 and "'fused' given more than once" in capsys.readouterr().err


def test_bench_arguments_are_checked_before_any_timing(tmp_path, capsys, monkeypatch):
    """One line and status 2, before minutes of timing are spent: a bad --repeats, a device
    this machine lacks, graph providers off the GPU, an --out that cannot be written."""
    from aigc_fast import benchmark, cli

    monkeypatch.delenv("AIGC_FAST_TRACEBACK", raising=False)
    monkeypatch.setattr(benchmark, "run", lambda *a, **k: pytest.fail("timed despite bad arguments"))
    (tmp_path / "a-file").write_text("")
    cases = [(["--repeats", "0"], "--repeats must be at least 1"), (["--device", "cpuu"], "device 'cpuu'"),
             (["--providers", "fused+graph"], "fused+graph replay CUDA graphs"),
             (["--out", str(tmp_path / "a-file" / "sub")], "cannot write there")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "torch sees no CUDA GPU here"))
    else:
        cases.append((["--device", "cuda", "--precision", "fp16", "--providers", "fused+graph"],
                      "the trainers replay no graph in fp16"))
    for arguments, message in cases:
        with pytest.raises(SystemExit) as stopped:
            cli.main(["bench", "--workloads", "vae28", *arguments])
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and message in err and "Traceback" not in err, (arguments, err)
    monkeypatch.setattr(aigc_fast._impl, "fused_unavailable_reason", lambda device: "no kernels here")
    with pytest.raises(SystemExit) as stopped:  # a fused row would time the reference
        cli.main(["bench", "--workloads", "vae28", "--providers", "fused,eager"])
    assert stopped.value.code == 2 and "fused would time the reference ops under the fused name: no kernels here" \
        in capsys.readouterr().err


def test_bench_ops_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("pytest_benchmark")
    from aigc_fast.cli import main

    monkeypatch.chdir(ROOT)  # the op suites are in the source checkout's bench/
    assert main(["bench", "--ops", "--ops-filter", "test_reparameterize and 128x64 and z- and fwd+bwd and cpu",
                 "--workloads", "vae28", "--providers", "fused", "--layouts", "nchw", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "ops.csv").read_text().splitlines()))
    assert sorted(r["provider"] for r in rows) == ["compile", "compile+aten_rng", "copy", "eager", "fused"]
    kernels = ",".join(aigc_fast._extension.compiled_backends())
    assert {(r["aigc_fast"], r["kernels"]) for r in rows} == {(aigc_fast.__version__, kernels)}  # as steps.csv
    assert "GB/s fused / copy" in (tmp_path / "ops.md").read_text()
    assert (tmp_path / "steps.csv").is_file() and not (tmp_path / ".benchmarks").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the selected sizes run on a GPU")
def test_bench_ops_that_select_only_skipped_cases_say_so(tmp_path, monkeypatch, capsys):
    """No results: a message, and no tables of an earlier run left beside this run's steps."""
    pytest.importorskip("pytest_benchmark")
    from aigc_fast.cli import main

    monkeypatch.chdir(ROOT)
    (tmp_path / "ops.md").write_text("an earlier run's tables")
    assert main(["bench", "--ops", "--ops-filter", "b2048", "--workloads", "vae28", "--providers", "fused",
                 "--layouts", "nchw", "--repeats", "1", "--out", str(tmp_path)]) != 0
    assert "the op benchmarks wrote no results" in capsys.readouterr().err
    assert not (tmp_path / "ops.md").exists() and (tmp_path / "steps.csv").is_file()


def bench_script(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # their `from profile_ops import ...`
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script, argv, message", [
    ("conv_bound", ["--workloads", "foo"], "'foo': choose from dcgan28"),
    ("profile_step", ["--providers", "fused,bogus"], "'bogus': choose from fused"),
    ("profile_step", ["--device", "tpu"], "--device must be cpu or cuda"),
    ("profile_ops", ["--repeats", "0"], "--repeats must be at least 1"),
    ("report", ["no-such-run.json"], "no file no-such-run.json"),
])
def test_bench_scripts_refuse_bad_arguments_in_one_line(script, argv, message, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_script(script, monkeypatch).main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and "Traceback" not in err


def test_profile_ops_table_on_cpu(capsys):
    """bench/profile_ops.py profiles every op, fused and eager, and the counts mean
    something: the fused ops with many eager steps make fewer host ATen calls."""
    spec = importlib.util.spec_from_file_location("profile_ops", ROOT / "bench" / "profile_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--device", "cpu", "--scale", "0.005", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and not line.startswith("| op |")]
    assert len(rows) == 2 * len(module.cases("cpu"))
    calls = {(op.strip(), impl.strip()): int(n) for op, _, impl, _, n, *_ in rows}
    for op in ("reparameterize (z+kl)", "vae_loss (bce)"):
        assert 0 < calls[(op, "fused")] < calls[(op, "eager")]
    assert all(float(row[3]) > 0 for row in rows)


def test_conv_bound_tables_on_cpu(capsys, monkeypatch):
    """bench/conv_bound.py: the default step's convolution time is measured (more than
    nothing), the rest is the difference, and the conv-transpose is timed in every setting
    at both input sizes. (Not that the convolutions take less than the step: the two are
    timed in different steps, and on a busy host the profiled ones ran slower, 73 against
    70 ms, in CI.)"""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # its `from profile_ops import ...`
    spec = importlib.util.spec_from_file_location("conv_bound", ROOT / "bench" / "conv_bound.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--workloads", "vae28", "--rounds", "3", "--batch", "2"])  # medians of 3: one slow step passes
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "---" not in line]
    step = next(row for row in rows if row[0] == "vae28")
    eager, budget, default, conv, rest = (float(cell.split()[0]) for cell in step[1:6])
    assert budget == pytest.approx(eager / 2, abs=0.06) and conv > 0
    assert rest == pytest.approx(default - conv, abs=0.11)
    sizes = [row for row in rows if "->" in row[0]]
    assert [row[0] for row in sizes] == ["7x7 -> 14x14", "8x8 -> 16x16"]
    assert all(float(cell) > 0 for row in sizes for cell in row[1:5])


def test_op_times_are_the_breakdown_in_milliseconds(monkeypatch):
    """benchmark.op_times: a convolution's forward+backward lands in its category, and
    breakdown's shares are those times over their sum."""
    conv = torch.nn.Conv2d(3, 8, 3)
    x = torch.randn(4, 3, 16, 16)

    def step():
        conv(x).sum().backward()

    step()
    times = benchmark.op_times(step)
    assert set(times) == {"convolution", "aigc_fast", "optimizer", "other"}
    assert times["convolution"] > 0 and times["aigc_fast"] == 0 and times["optimizer"] == 0
    monkeypatch.setattr(benchmark, "op_times", lambda step: {**times, "optimizer": 1.0})
    total = sum(times.values()) + 1.0
    assert benchmark.breakdown(step) == pytest.approx({k: v / total for k, v in {**times, "optimizer": 1.0}.items()})


def test_compile_strictly_turns_the_silent_eager_fallback_into_an_error():
    """Past dynamo's recompile limit a compiled function runs eagerly without a word; the
    benchmarks' "compile" provider would then time eager PyTorch under its name."""
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(recompile_limit=2), benchmark.compile_strictly():
        double = torch.compile(lambda x: x * 2, dynamic=False, backend="eager")
        double(torch.ones(1))
        double(torch.ones(2))
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            double(torch.ones(3))
    assert not dynamo_config.fail_on_recompile_limit_hit  # the context restores the setting
    torch.compiler.reset()


def test_op_suites_run_the_providers_of_a_case_back_to_back():
    """bench/conftest.py reorders collection so every case's providers are timed together:
    a machine's busy spell then lands on one case, not on one provider's whole column."""
    import subprocess
    import sys

    pytest.importorskip("pytest_benchmark")
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "bench/test_bench_blocks.py", "bench/test_bench_losses.py"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    providers = {"fused", "eager", "compile", "conv only", "copy"}
    cases = []  # the case of each item in run order: its id without the provider
    for test_id in ids:
        parts = test_id.split("[", 1)[1].rstrip("]").split("-")
        cases.append((test_id.split("[")[0], tuple(p for p in parts if p not in providers)))
    runs = [case for i, case in enumerate(cases) if i == 0 or case != cases[i - 1]]
    assert len(ids) > 100 and len(runs) == len(set(runs))  # each case is one contiguous run


def test_step_benchmark_times_every_setting_and_provider_in_turns(monkeypatch):
    """benchmark.run takes one step of every (setting, provider) case per round, so a drift
    of the machine's speed lands on all of them alike: comparisons across settings (the
    default channels_last against eager NCHW) are as fair as those across providers."""
    order = []

    def make_step(workload, provider, *, precision, channels_last, device):
        return (lambda: order.append((precision, channels_last, provider)) or {}), 8

    monkeypatch.setattr(benchmark, "make_step", make_step)
    settings = [("fp32", False), ("fp32", True)]
    rows = benchmark.run(["vae28"], ["fused", "eager"], settings, repeats=3, memory=False, log=lambda _: None)
    cases = [(p, cl, provider) for p, cl in settings for provider in ("fused", "eager")]
    timed = order[-3 * len(cases):]  # after each case's warm-up steps
    assert timed == cases + cases[::-1] + cases  # every other round backwards
    assert [(r["precision"], r["memory_format"], r["provider"]) for r in rows] == [
        (p, "channels_last" if cl else "nchw", provider) for p, cl, provider in cases]


def test_a_step_benchmark_leaves_nothing_on_disk(tmp_path, monkeypatch):
    """make_step builds a trainer but never fits it: no run directory may be created (each
    step of an `aigc-fast bench` run had left an empty temporary folder behind)."""
    monkeypatch.setattr(benchmark.tempfile, "tempdir", str(tmp_path))
    step, batch = benchmark.make_step("vae28", "eager")
    step()
    assert batch == 128 and not [p for p in tmp_path.iterdir() if p.name.startswith("aigc-fast")]


def test_an_fp16_step_benchmark_runs_step_after_step():
    """The timed step is the trainer's train_step, whose GradScaler update is part of it: an
    update of its own on top had raised "No inf checks were recorded" at the first fp16 step."""
    with pytest.warns(RuntimeWarning, match="precision='fp16' on a CPU"):
        step, _ = benchmark.make_step("vae28", "eager", precision="fp16")
    for _ in range(2):
        assert all(map(torch.isfinite, map(torch.tensor, step().values())))


def test_a_fused_step_without_kernels_refuses_to_time_the_reference(monkeypatch):
    """With no kernels for the device the trainers run the reference ops: a "fused" row would
    be plain PyTorch under the fused name (as from the source folder, or on an unbuilt GPU)."""
    monkeypatch.setattr(aigc_fast._extension, "LOADED", False)
    monkeypatch.setattr(aigc_fast._extension, "REASON", "not built (test)")
    with pytest.raises(ValueError, match=r"fused would time the reference ops under the fused name: .*not built"):
        benchmark.make_step("vae28", "fused")


def test_a_step_benchmark_needs_a_timed_step():
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        benchmark.run(["vae28"], ["eager"], [("fp32", False)], repeats=0, memory=False, log=lambda _: None)


def test_merged_runs_pair_each_ratio_within_its_run(tmp_path):
    """bench/merge_runs.py: times are the median of the runs' medians, speed-ups the median of
    each run's own eager / provider ratio (not a ratio of medians from different runs)."""
    spec = importlib.util.spec_from_file_location("merge_runs", ROOT / "bench" / "merge_runs.py")
    merge_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge_runs)
    facts = {"date": "2026-12-01", "cpu": "a CPU", "threads": 2, "gpu": "", "torch": "2.14.1", "workload": "vae28"}
    # The runs' own ratios are 1.5, 1.0 and 0.8: the median 1.00x, the range 0.80-1.50.
    timings = {("eager", "1"): 0.09, ("fused", "1"): 0.06, ("eager", "2"): 0.10, ("fused", "2"): 0.10,
               ("eager", "3"): 0.12, ("fused", "3"): 0.15}
    for run in ("1", "2", "3"):
        with open(tmp_path / f"run{run}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*facts, "provider", "precision", "memory_format", "median_s",
                                                   "peak_bytes"])
            writer.writeheader()
            for provider in ("fused", "eager"):
                writer.writerow({**facts, "provider": provider, "precision": "fp32", "memory_format": "nchw",
                                 "median_s": timings[provider, run], "peak_bytes": 2**20})
            writer.writerow({**facts, "provider": "fused", "precision": "bf16", "memory_format": "channels_last",
                             "median_s": timings["eager", run] / 2, "peak_bytes": 2**20})
    table = merge_runs.merge(merge_runs.read([str(tmp_path / f"run{i}.csv") for i in (1, 2, 3)]))
    assert "| vae28 | fp32 | nchw | 100.0 (1.00×, 0.80-1.50) | 100.0 | 1 / 1 MiB |" in table
    assert "- vae28: 2.00×, 2.00×, 2.00×" in table  # the defaults against eager fp32 NCHW, per run


def op_run(tmp_path, name, fused, eager, cpu="Test CPU"):
    data = {"datetime": "2026-12-01T10:00:00", "machine_info": {"cpu": {"brand_raw": cpu}, "threads": 2,
                                                                  "gpu": None, "torch": "2.x"},
            "benchmarks": [fake_benchmark("fused", fused), fake_benchmark("eager", eager)]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_op_runs_merge_pairs_each_ratio_within_its_run(tmp_path, capsys):
    """report.py --runs: a time is the median of the runs' medians, a speed-up the median of
    each run's own eager / fused ratio, then the range (not a ratio of medians across runs)."""
    # The runs' own ratios are 6, 1 and 1: the median 1.00x. The medians, 2 and 4 ms, would give 2x.
    runs = [op_run(tmp_path, "1.json", 0.001, 0.006), op_run(tmp_path, "2.json", 0.004, 0.004),
            op_run(tmp_path, "3.json", 0.002, 0.002)]
    load_report().main(["--runs", *runs])
    out = capsys.readouterr().out
    assert "3 runs" in out
    header, _, row = [line for line in out.splitlines() if line.startswith("|")][:3]
    cells = dict(zip(header.strip(" |").split(" | "), row.strip(" |").split(" | ")))
    assert cells["fused"] == "2.000" and cells["eager"] == "4.000"
    assert cells["fused vs eager"] == "1.00×, 1.00-6.00"


def test_op_runs_merge_refuses_other_machines_and_missing_cases(tmp_path):
    report = load_report()
    with pytest.raises(SystemExit, match="different machines"):
        report.main(["--runs", op_run(tmp_path, "1.json", 1, 2), op_run(tmp_path, "2.json", 1, 2, cpu="Other")])
    partial = json.loads(Path(op_run(tmp_path, "3.json", 1, 2)).read_text())
    partial["benchmarks"].pop()  # eager missing from this run
    (tmp_path / "3.json").write_text(json.dumps(partial))
    with pytest.raises(SystemExit, match="in 1 of the 2 runs"):
        report.main(["--runs", op_run(tmp_path, "1.json", 1, 2), str(tmp_path / "3.json")])
    with pytest.raises(SystemExit):  # argparse's error: the merged tables only
        report.main(["--runs", op_run(tmp_path, "1.json", 1, 2), "--csv", str(tmp_path / "runs.csv")])
    assert not (tmp_path / "runs.csv").exists()
