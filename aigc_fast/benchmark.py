"""Training-step benchmarks: one full step of the package's trainers (forward, losses,
backward, optimizer steps; for a GAN both D and G) per workload, provider and setting,
timed and with its peak memory. Used by `aigc-fast bench` and bench/test_bench_steps.py.

Providers: "fused" (the fused backend), "eager" (the reference backend: plain PyTorch),
"compile" (the reference under torch.compile), "fused+compile", and on a GPU "fused+graph"
and "eager+graph" (the step replayed as one CUDA graph, the trainers' default there: see
aigc_fast/train/cuda_graph.py). The others run with cuda_graph=False, as a plain training
loop does.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from . import _impl
from ._info import cpu_info, cpu_vector_isa

# name: (kind, config fields). The two image sizes GAN and VAE papers train on first
# (MNIST's 28x28x1, CelebA-style 64x64x3) at DCGAN's batch of 128 (the 64x64 VAE at 64).
WORKLOADS = {
    "dcgan28": ("gan", dict(image_size=28, channels=1, batch_size=128)),
    "dcgan64": ("gan", dict(image_size=64, channels=3, batch_size=128)),
    "vae28": ("vae", dict(image_size=28, channels=1, batch_size=128)),
    "vae64": ("vae", dict(image_size=64, channels=3, batch_size=64)),
}


class Provider(NamedTuple):
    backend: str  # the models' ops: "fused" or "reference"
    compiled: bool  # torch.compile
    graphed: bool  # CUDA graph replay


PROVIDERS = {
    "fused": Provider("fused", False, False), "eager": Provider("reference", False, False),
    "compile": Provider("reference", True, False), "fused+compile": Provider("fused", True, False),
    "fused+graph": Provider("fused", False, True), "eager+graph": Provider("reference", False, True),
}


def default_providers(device: str, precisions: List[str]) -> List[str]:
    """fused, eager and compile; and the graph providers where the trainers replay graphs:
    on a GPU, without fp16."""
    graphs = str(device).startswith("cuda") and "fp16" not in precisions  # (a bad name is refused later, by name)
    return ["fused", "eager", "compile"] + (["fused+graph", "eager+graph"] if graphs else [])


def check_cases(providers: List[str], precisions: List[str], device: str) -> None:
    """Refuses, with a ValueError saying why, cases that would fail minutes into a run or time
    something other than their name: graph providers off a GPU or with fp16, fused providers
    where the kernels cannot run (the trainers would then run the reference ops under the
    fused name). `aigc-fast bench` asks before any timing, make_step for each case."""
    graphed = [p for p in providers if PROVIDERS[p].graphed]
    if graphed and torch.device(device).type != "cuda":
        raise ValueError(f"{', '.join(graphed)} replay CUDA graphs: they run on a GPU only, not on {device}")
    if graphed and "fp16" in precisions:
        raise ValueError(f"{', '.join(graphed)} and fp16: the trainers replay no graph in fp16 (its GradScaler "
                         "checks for overflow on the host); time fp16 without them")
    fused = [p for p in providers if PROVIDERS[p].backend == "fused"]
    reason = _impl.fused_unavailable_reason(torch.device(device)) if fused else None
    if reason is not None:
        raise ValueError(f"{', '.join(fused)} would time the reference ops under the fused name: {reason}")


class TrainingStep:
    """One training step of a trainer on a fixed batch (make_step): call it to run a step.
    Memory is measured from no gradients: release_gradients frees what the step's own
    zero_grad(set_to_none=True) would, since the CPU profiler reports no free of a block
    allocated before it started. graph_peak_bytes: for a step replayed as a CUDA graph,
    the peak of its capture (a replay allocates nothing of its own); else None."""

    def __init__(self, trainer, images: torch.Tensor):
        self.trainer, self.images = trainer, images
        self.graph_peak_bytes: Optional[int] = None

    def __call__(self) -> Dict[str, float]:
        # Reading the losses waits for the whole step, fp16's scale update included (queued before).
        return self.trainer.train_step(self.images)

    def release_gradients(self) -> None:
        for part in self.trainer.modules().values():
            if isinstance(part, torch.optim.Optimizer):
                part.zero_grad(set_to_none=True)

    def capture_graph(self) -> None:
        """The eager warm-up steps and the capture of a graphed step, as setup (as
        compilation is), and the capture's peak: the graph's pool, held from then on."""
        from .train.cuda_graph import WARMUP_STEPS

        device = self.trainer.device
        for _ in range(WARMUP_STEPS):
            self()
        self.release_gradients()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
        self()  # the capture and the first replay
        self.graph_peak_bytes = torch.cuda.max_memory_allocated(device) - held
        if not self.trainer._graphed.captured:
            raise RuntimeError("the trainer did not capture its step as a CUDA graph")


def make_step(workload: str, provider: str, *, precision: str = "fp32", channels_last: bool = False,
              device: str = "cpu") -> Tuple[TrainingStep, int]:
    """(one training step of the workload on a fixed batch, the batch size)."""
    from .train import TRAINERS

    kind, fields = WORKLOADS[workload]
    backend, compiled, graphed = PROVIDERS[provider]
    check_cases([provider], [precision], device)
    config_class, trainer_class = TRAINERS[kind]
    # train_step writes nothing (only fit creates the run directory), so out_dir is never made
    config = config_class(**fields, backend=backend, compile=compiled, cuda_graph=graphed, precision=precision,
                          channels_last=channels_last, device=device, progress=False,
                          out_dir=str(Path(tempfile.gettempdir()) / "aigc-fast-bench-unused"))
    trainer = trainer_class(config)
    if graphed and not trainer.cuda_graph:  # under torchrun
        raise ValueError(f"the {provider!r} provider needs the trainer's CUDA graph, which is off here "
                         "(see the trainers' cuda_graph option): time it with fused or eager instead")
    trainer.configure_backends()  # as fit() does: cudnn.benchmark on a GPU, as a training run has it
    shape = (config.batch_size, config.channels, config.image_size, config.image_size)
    images = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    lo, hi = trainer.value_range
    images = (images * (hi - lo) + lo).to(trainer.device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    step = TrainingStep(trainer, images)
    if graphed:
        step.capture_graph()
    return step, config.batch_size


def compile_strictly():
    """A context in which a compiled provider fails loudly instead of timing eager PyTorch
    under its name. Dynamo compiles a function once per variant it meets (shapes, strides,
    grad mode, the module instance) and, past `recompile_limit` variants of one code object
    (8), runs it eagerly from then on without a word; a benchmark that reuses one compiled
    function over many sizes, or builds several compiled models of one class, crosses that
    silently."""
    config = torch._dynamo.config
    if not hasattr(config, "fail_on_recompile_limit_hit"):  # an older torch
        import warnings

        warnings.warn("this torch cannot make dynamo fail at its recompile limit: a compiled provider past it "
                      "would time eager PyTorch", RuntimeWarning, stacklevel=2)
        return contextlib.nullcontext()
    return config.patch(fail_on_recompile_limit_hit=True)


def time_step(step: Callable[[], Dict[str, float]], *, warmup: int = 2, repeats: int = 5) -> List[float]:
    """Seconds of each of `repeats` steps after `warmup` untimed ones (compilation, caches)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def cpu_peak_bytes(step: Callable[[], object]) -> Optional[int]:
    """Peak bytes the CPU allocator held during one call of `step`, beyond what was held
    before it, from the profiler's allocation events (CPU tensors have no allocator
    statistics; tracemalloc does not see them). None if this torch lacks those events."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def peak_bytes(step: Callable[[], object], device: str) -> Optional[int]:
    """A step's peak memory beyond what was held before it: CUDA's allocator statistics on
    a GPU, the CPU allocator's events on the CPU. A training step (make_step) has its
    gradients freed first, on both devices alike, so the peak is what the step adds to the
    weights and optimizer state, its new gradients included. A step replayed as a CUDA
    graph: the peak of its capture (make_step), since a replay allocates nothing of its own."""
    if isinstance(step, TrainingStep):
        if step.graph_peak_bytes is not None:
            return step.graph_peak_bytes
        step.release_gradients()
    if device.startswith("cuda"):
        gpu = torch.device(device)  # cuda:1 is not the current device of a single process
        torch.cuda.synchronize(gpu)
        torch.cuda.reset_peak_memory_stats(gpu)
        base = torch.cuda.memory_allocated(gpu)
        step()
        torch.cuda.synchronize(gpu)
        return torch.cuda.max_memory_allocated(gpu) - base
    return cpu_peak_bytes(step)


def op_times(step: Callable[[], object]) -> Dict[str, float]:
    """Milliseconds of one step's CPU-side op time (the profiler's self time of each op,
    summed by category): convolutions (the vendor library), aigc_fast's kernels, the
    optimizer, and everything else. On a GPU the kernels' device time is what matters: see
    bench/."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    times = {"convolution": 0.0, "aigc_fast": 0.0, "optimizer": 0.0, "other": 0.0}
    for event in prof.key_averages():
        name = event.key
        if "conv" in name or "mkldnn" in name:
            category = "convolution"
        elif name.startswith("aigc_fast::"):
            category = "aigc_fast"
        elif "_foreach_" in name or "Optimizer.step" in name or "adam" in name.lower():
            category = "optimizer"
        else:
            category = "other"
        times[category] += event.self_cpu_time_total / 1e3
    return times


def breakdown(step: Callable[[], object]) -> Dict[str, float]:
    """op_times as shares of their sum."""
    times = op_times(step)
    total = sum(times.values()) or 1.0
    return {k: v / total for k, v in times.items()}


def breakdown_table(workloads: List[str], settings: List[Tuple[str, bool]], *, device: str = "cpu") -> str:
    """A Markdown table of where each fused step's CPU op time goes (breakdown), per setting."""
    table = ("Where a fused step's CPU op time goes (profiler self time):\n\n"
             "| workload | setting | convolution | aigc_fast | optimizer | other |\n|---|---|---:|---:|---:|---:|\n")
    for workload in workloads:
        for precision, channels_last in settings:
            step, _ = make_step(workload, "fused", precision=precision, channels_last=channels_last, device=device)
            time_step(step, warmup=2, repeats=0)
            shares = breakdown(step)
            layout = "channels_last" if channels_last else "nchw"
            table += f"| {workload} | {precision} {layout} | " + " | ".join(
                f"{100 * shares[k]:.0f}%" for k in ("convolution", "aigc_fast", "optimizer", "other")) + " |\n"
    return table


def run(workloads: List[str], providers: List[str], settings: List[Tuple[str, bool]], *, device: str = "cpu",
        repeats: int = 5, memory: bool = True, log: Callable[[str], None] = print) -> List[Dict[str, object]]:
    """One row per (workload, setting, provider): median and spread of the step time,
    images/s, peak memory, and the machine facts.

    Every (setting, provider) case of one workload is timed in turns, one step each per
    round, rather than one case's steps after another's: on a shared machine whose speed
    drifts over minutes, a drift then lands on every case alike instead of on whichever
    ran during it, and settings compare as fairly as providers (the default settings
    against eager fp32 NCHW is one of the comparisons users read). The rounds alternate
    direction, so what a case inherits from the one before it (caches, allocator state)
    is not always the same case's.

    Compiled providers run under compile_strictly, and torch.compile's caches are reset
    (torch.compiler.reset) before each workload, the caller's compiled code included."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (timed steps per case), got {repeats}")
    with compile_strictly(), _room_for_settings(len(settings)):
        return _run(workloads, providers, settings, device=device, repeats=repeats, memory=memory, log=log)


def _room_for_settings(count: int):
    """Dynamo's recompile limit, times the settings held at once. Each setting builds its own
    compiled models, all alive together, and every model instance is a variant of the
    model class's code objects: a DCGAN measured in three settings needs more than the 8
    that one setting fits in. Raising the limit keeps every variant compiled code, which
    compile_strictly still enforces."""
    config = torch._dynamo.config
    if not hasattr(config, "recompile_limit"):  # an older torch: cache_size_limit
        return contextlib.nullcontext()
    return config.patch(recompile_limit=max(config.recompile_limit, 8 * count))


def _run(workloads, providers, settings, *, device, repeats, memory, log):
    facts = machine_facts(device)
    rows = []
    for workload in workloads:
        # The previous workload's compiled code is dead: without this, the compiled
        # providers' variants pile up on the models' shared code objects.
        torch.compiler.reset()
        cases = [(precision, channels_last, provider) for precision, channels_last in settings
                 for provider in providers]
        steps = {}
        for case in cases:
            precision, channels_last, provider = case
            steps[case], batch = make_step(workload, provider, precision=precision, channels_last=channels_last,
                                           device=device)
            time_step(steps[case], warmup=3 if PROVIDERS[provider].compiled else 2, repeats=0)
        times: Dict[tuple, List[float]] = {case: [] for case in cases}
        for round_ in range(repeats):  # every other round backwards: no case always follows the same one
            for case in cases if round_ % 2 == 0 else cases[::-1]:
                times[case] += time_step(steps[case], warmup=0, repeats=1)
        for case in cases:
            precision, channels_last, provider = case
            median = statistics.median(times[case])
            row = {**facts, "device": device, "rounds": repeats, "workload": workload, "provider": provider,
                   "precision": precision, "memory_format": "channels_last" if channels_last else "nchw",
                   "median_s": median,
                   "min_s": min(times[case]), "max_s": max(times[case]), "images_per_s": batch / median,
                   "peak_bytes": peak_bytes(steps[case], device) if memory else None}
            rows.append(row)
            log(f"{workload} {precision} {row['memory_format']} {provider}: {median * 1e3:.1f} ms "
                f"({batch / median:.0f} images/s)")
        del steps  # before the next workload's models are built
    return rows


def machine_facts(device: str = "cpu") -> Dict[str, object]:
    from . import _extension
    from ._version import __version__

    cpu = cpu_info("model name") or platform.processor() or platform.machine()
    isa = cpu_vector_isa()
    cpu = f"{cpu} ({isa})" if isa else cpu
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "",
            "torch": torch.__version__,
            "aigc_fast": __version__, "kernels": ",".join(_extension.compiled_backends()) or "none"}


def write_csv(rows: List[Dict[str, object]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def machine_line(row: Dict[str, object]) -> str:
    """Where a row was measured, for a table's or chart's heading: CPU (and its kernel ISA
    where recorded), GPU, threads, torch, date."""
    return (f"{row['cpu']}{', ' + row['gpu'] if row['gpu'] else ''}, {row['threads']} threads, "
            f"torch {row['torch']}, {row['date']}")


def markdown(rows: List[Dict[str, object]]) -> str:
    """One table: a row per workload and setting, a column per provider (median ms and
    speed-up over eager in the same setting), and the fused step's peak memory over eager's.
    Rows of several runs (each tagged with its "run", as bench/merge_runs.py reads them)
    merge: a time is the median of the runs' medians, a speed-up the median of the runs' own
    ratios (eager and the provider timed in the same run), then their range. Values may be
    numbers or a CSV's strings."""
    runs = list(dict.fromkeys(r.get("run", "") for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    cases: Dict[tuple, Dict[Tuple[str, object], Dict[str, object]]] = {}
    for r in rows:
        case = cases.setdefault((r["workload"], r["precision"], r["memory_format"]), {})
        key = (r["provider"], r.get("run", ""))
        if key in case:  # (a ratio would pair timings of different runs)
            raise ValueError(f"two rows for {r['provider']} {r['workload']} {r['precision']} {r['memory_format']} "
                             f"in one run")
        case[key] = r
    what = ("median ms (speed-up over eager at the same setting)" if len(runs) == 1 else
            f"median ms (the median of {len(runs)} runs' medians; in brackets the speed-up over eager at the same "
            "setting, the median of the runs' own ratios and their range)")
    lines = [f"{machine_line(rows[0])}. One training step, {what}.", "",
             "| workload | precision | layout | " + " | ".join(providers) + " | peak memory fused / eager |",
             "|---|---|---|" + "---:|" * (len(providers) + 1)]
    for (workload, precision, layout), by in cases.items():
        times = {key: float(r["median_s"]) for key, r in by.items()}
        cells = []
        for p in providers:
            mine = [times[p, run] for run in runs if (p, run) in times]
            if not mine:
                cells.append("")
                continue
            paired = [times["eager", run] / times[p, run] for run in runs
                      if p != "eager" and (p, run) in times and ("eager", run) in times]
            cells.append(f"{statistics.median(mine) * 1e3:.1f}" + (f" ({speedup_spread(paired)})" if paired else ""))
        peaks = {p: [int(by[p, run]["peak_bytes"]) for run in runs if by.get((p, run), {}).get("peak_bytes")]
                 for p in ("fused", "eager")}
        mem = (f"{statistics.median(peaks['fused']) / 2**20:.0f} / {statistics.median(peaks['eager']) / 2**20:.0f} MiB"
               if peaks["fused"] and peaks["eager"] else "")
        lines.append(f"| {workload} | {precision} | {layout} | " + " | ".join(cells) + f" | {mem} |")
    return "\n".join(lines) + "\n"


def speedup_spread(ratios: List[float]) -> str:
    """A speed-up: the median ratio, then the runs' range where they differ."""
    text = f"{statistics.median(ratios):.2f}×"
    low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    return text if low == high else f"{text}, {low}-{high}"


def bar_chart(rows: List[Dict[str, object]], path: Path) -> Optional[Path]:
    """The training-step chart: each provider's speed-up over eager per workload and setting,
    and the fused step's peak memory over eager's."""
    groups = list(dict.fromkeys((r["workload"], r["precision"], r["memory_format"]) for r in rows))
    by = {(r["workload"], r["precision"], r["memory_format"], r["provider"]): r for r in rows}
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != "eager"]

    def ratio(group, provider, key, invert=False):
        a, b = by.get((*group, provider)), by.get((*group, "eager"))
        if not (a and b and a[key] and b[key]):
            return None
        return b[key] / a[key] if invert else a[key] / b[key]

    speedups = {p: [ratio(g, p, "median_s", invert=True) for g in groups] for p in providers}
    memory = [ratio(g, "fused", "peak_bytes") for g in groups]
    labels = [f"{w}\n{pr} {mf}" for w, pr, mf in groups]
    return comparison_chart(labels, speedups, memory, path, title=f"training step; {machine_line(rows[0])}")


def comparison_chart(labels: List[str], speedups: Dict[str, List[Optional[float]]],
                     memory: List[Optional[float]], path: Path, *, title: str = "") -> Optional[Path]:
    """A PNG with two panels of horizontal bars, one row per label: each provider's speed-up
    over eager, and the fused peak memory over eager's (where measured). Used for the step
    suite here and the op suites in bench/report.py. Needs matplotlib (None without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    has_memory = any(m is not None for m in memory)
    fig, axes = plt.subplots(1, 2 if has_memory else 1, figsize=(11 if has_memory else 7, 1.5 + 0.32 * len(labels)),
                             sharey=True, squeeze=False, gridspec_kw={"width_ratios": [3, 1.3] if has_memory else [1]},
                             layout="constrained")
    ax = axes[0][0]
    rows = range(len(labels))
    height = 0.8 / max(1, len(speedups))
    for i, (provider, values) in enumerate(speedups.items()):  # NaN: no bar where not measured
        ax.barh([r + i * height for r in rows], [math.nan if v is None else v for v in values], height,
                label=provider)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([r + height * (len(speedups) - 1) / 2 for r in rows])
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(len(labels) - 0.5 + height * (len(speedups) - 1), -0.5)  # first label on top
    ax.set_xlabel("speed-up over eager (higher is faster)")
    fig.suptitle(title, fontsize=9)
    # Above the panels, not among the bars: inside the axes it covered whichever were there.
    if speedups:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside upper left", ncol=len(speedups), frameon=False,
                   fontsize=7)
    if has_memory:
        mem = axes[0][1]
        mem.barh([r + height * (len(speedups) - 1) / 2 for r in rows], [math.nan if m is None else m for m in memory],
                 0.5, color="gray")
        mem.axvline(1.0, color="black", linewidth=0.8)
        mem.set_xlabel("peak memory, fused / eager")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
