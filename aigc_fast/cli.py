"""The aigc-fast command: info, train, sample, evaluate, bench.

    aigc-fast train vae --data mnist --epochs 5 --out-dir runs/mnist-vae
    aigc-fast train gan --resume runs/mnist-gan --epochs 5      # five more epochs
    aigc-fast sample runs/mnist-gan -n 1000
    aigc-fast evaluate runs/mnist-gan
    aigc-fast bench --workloads dcgan28,vae28
    torchrun --nproc_per_node 2 -m aigc_fast train gan --data mnist   # DistributedDataParallel
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import select
import sys
import traceback
import typing
from pathlib import Path
from typing import Dict, List, Tuple

_EXIT_SIGINT = 130  # the shell's exit status for a process stopped by Ctrl-C (128 + SIGINT)


def _config_options(parser: argparse.ArgumentParser, config_class) -> None:
    """One --option per config field (--out-dir for out_dir, --flip/--no-flip for booleans),
    absent unless given, so a resumed run keeps its recorded values for the rest."""
    from .train.config import FIELD_CHOICES

    hints = typing.get_type_hints(config_class)  # the fields' types, resolved from their annotations
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        optional = type(None) in typing.get_args(kind)  # Optional[X]: X, or "none"
        if optional:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        help_text = field.metadata.get("help", "")
        default = "none" if field.default is None else repr(field.default)
        if field.name == "data":  # the command trains on something: the built-in MNIST
            help_text, default = "mnist, digits, an image folder or an .npy/.npz file", "'mnist'"
        help_text = f"{help_text} (default {default})"
        # The names a field takes, in its metavar (not argparse's choices: the config's own
        # refusal explains more, as GANConfig does for wgan).
        metavar = "{" + ",".join(FIELD_CHOICES[field.name]) + "}" if field.name in FIELD_CHOICES else None
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=float, nargs=len(typing.get_args(kind)), default=argparse.SUPPRESS,
                                help=help_text)
        else:
            convert = kind if kind in (int, float) else str
            if optional:  # "none" clears it (e.g. a recorded --max-steps on --resume)
                convert = _or_none(convert)
            parser.add_argument(flag, type=convert, default=argparse.SUPPRESS, help=help_text, metavar=metavar)


def _or_none(convert):
    def parse(text: str):
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error messages
    return parse


def _train(args, given: dict) -> int:
    from .train import TRAINERS, TrainingInterrupted

    config_class, trainer_class = TRAINERS[args.kind]
    if args.resume:
        recorded = Path(args.resume) / "config.json"
        if not Path(args.resume).is_dir():
            raise FileNotFoundError(f"--resume {args.resume}: no such folder (a run directory, as --out-dir made it)")
        if not recorded.is_file():
            raise ValueError(f"--resume {args.resume}: no config.json there (not a run directory)")
        if "out_dir" in given and Path(given["out_dir"]) != Path(args.resume):
            raise ValueError("--resume continues the run in its own directory; drop --out-dir")
        if args.config:
            raise ValueError("--resume keeps the run's recorded config (flags change single fields); drop --config")
        config = config_class.from_json(recorded)
        config.out_dir = args.resume
    elif args.config:
        config = config_class.from_json(Path(args.config))
    else:
        config = config_class()
    config = dataclasses.replace(config, **given)
    if config.data is None:
        if args.resume:
            raise ValueError(f"--resume {args.resume}: the run trained on in-memory images (fit(data) from Python), "
                             "which the command cannot load again; resume it from Python: fit(data, resume=True)")
        config.data = "mnist"
    trainer = trainer_class(config)
    if trainer.group.main:
        print(f"aigc-fast train {args.kind}: {trainer.settings()}", flush=True)
    try:
        metrics = trainer.fit(resume=bool(args.resume))
    except TrainingInterrupted as stopped:
        if trainer.group.main:
            # --epochs on a resume counts epochs more (the one in progress as one): the number
            # that finishes this run's plan, so that the command shown does just that.
            resume = f"aigc-fast train {args.kind} --resume {trainer.run_dir} --epochs"
            capped = trainer.config.max_steps is not None and stopped.step >= trainer.config.max_steps
            then = (f"finish it with {resume} {stopped.epochs_left}" if stopped.epochs_left else
                    f"its planned training was done; {resume} N" + (" --max-steps none" if capped else "") +
                    " trains N epochs more")
            print(f"aigc-fast: stopped by Ctrl-C after step {stopped.step}, epochs completed {trainer.epoch}; {then}",
                  file=sys.stderr)
        return _EXIT_SIGINT
    # (Only after a run that ended well: destroying the group while another process still
    # waits in a collective, after an error here, could hang it.)
    trainer.group.close()
    if trainer.group.main:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or _nothing_trained(args, given, config,
                                                                                         trainer.step)
        # (trainer.epoch is the epoch in progress, counted from 0 as in metrics.jsonl: after
        # the last one, the number of epochs completed.)
        print(f"step {trainer.step}, epochs completed {trainer.epoch}: {shown}\nrun directory: {trainer.run_dir} "
              f"(checkpoint.pt, metrics.jsonl, samples/)")
    return 0


def _nothing_trained(args, given, config, step: int) -> str:
    """Why a run trained no step, and what to give instead."""
    if config.epochs == 0:
        if "epochs" in given:
            asks = "--epochs 0 asks"
        elif args.resume:
            asks = "the run's recorded epochs is 0 (give --epochs N): it asks"
        else:
            asks = f"epochs is 0 in {args.config} (give --epochs N): it asks"
        return f"nothing to train: {asks} for no epoch"
    if config.max_steps is not None:
        return (f"nothing to train: max_steps={config.max_steps} and the run is at step {step} "
                "(give a larger --max-steps, or --max-steps none to lift the cap)")
    return "no step trained"


def _want_traceback() -> bool:
    return os.environ.get("AIGC_FAST_TRACEBACK") == "1"


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()  # here, so that a reader gone away is met below rather than at exit
        return code
    except BrokenPipeError:
        # The reader closed the pipe (aigc-fast info --json | head): stop quietly, as Python's
        # docs advise (a note on SIGPIPE), with stdout sent to devnull for the flush at exit.
        # (Before the OSError below, which it is: not an error in the arguments.) Another
        # pipe's error (a subprocess's) is the package's, and keeps its traceback.
        if not _stdout_is_closed():
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        # Ctrl-C outside a training loop (loading, evaluating, sampling), or a second one in it
        # (the first stops training between steps: _train reports it): one line, as for errors.
        if _want_traceback():
            raise
        print(f"aigc-fast {args.command}: interrupted", file=sys.stderr)
        return _EXIT_SIGINT
    # Most likely the arguments (a value, a path that is a file, data of the wrong type) or an
    # optional package not installed (its message says which to install): one line, and
    # where it was raised. (bench checks its arguments before it starts; an error while it
    # runs is the package's, and keeps its traceback.)
    except (ValueError, TypeError, OSError, ModuleNotFoundError) as error:
        if (args.command == "bench" and not isinstance(error, BadBenchArguments)) or _want_traceback():
            raise
        if isinstance(error, ModuleNotFoundError) and "pip install" not in str(error):  # not one of ours
            raise
        where = traceback.extract_tb(error.__traceback__)[-1]
        parser.exit(2, f"aigc-fast {args.command}: error: {error}\n(raised at {Path(where.filename).name}:"
                       f"{where.lineno}; AIGC_FAST_TRACEBACK=1 shows the traceback)\n")
    except FloatingPointError as error:  # a run whose loss went NaN or infinite: not the arguments' fault
        if _want_traceback():
            raise
        print(f"aigc-fast {args.command}: {error}", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    from .train import TRAINERS

    parser = argparse.ArgumentParser(prog="aigc-fast", description="Fused GAN/VAE kernels and training for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, compiled backends, and which implementation each op uses")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")

    train = commands.add_parser("train", help="train a DCGAN or a VAE (run directory: --out-dir)")
    # dest "kind", not "model": VAEConfig has a field `model` (its --model flag), which would overwrite it.
    models = train.add_subparsers(dest="kind", required=True, metavar="{" + ",".join(TRAINERS) + "}")
    for name, (config_class, _) in TRAINERS.items():
        sub = models.add_parser(name, help=config_class.__doc__.splitlines()[0],
                                description=f"{config_class.__doc__.splitlines()[0]} With --resume, a flag not "
                                "given keeps the run's recorded value: the defaults below are a new run's.")
        sub.add_argument("--config", help="a config JSON file (flags override it)")
        sub.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its checkpoint and config")
        _config_options(sub, config_class)

    sample = commands.add_parser("sample", help="generate images from a run: PNGs, samples.npz, grid.png")
    sample.add_argument("run_dir", help="a run directory (the --out-dir of aigc-fast train)")
    sample.add_argument("-n", type=int, default=64, help="how many images (default 64)")
    sample.add_argument("--out", help="output folder (default RUN_DIR/generated)")
    sample.add_argument("--seed", type=int, default=0, help="the same seed gives the same images (default 0)")
    sample.add_argument("--balanced", action="store_true",
                        help="n/K images of each class, labelled by the run's evaluation classifier")
    sample.add_argument("--data", help="with --balanced: the real data, if the run did not record it")
    sample.add_argument("--device", help="default: the run's device")

    evaluate = commands.add_parser("evaluate", help="FID/KID/IS/coverage/CAS (and ELBO/NLL for a VAE) of a run")
    evaluate.add_argument("run_dir", help="a run directory (the --out-dir of aigc-fast train)")
    evaluate.add_argument("-n", type=int, help="images to generate (default: as many as the real training set)")
    evaluate.add_argument("--data", help="the real data, if the run did not record it")
    evaluate.add_argument("--nll-samples", type=int, default=100,
                          help="importance samples of z per held-out image, for a VAE's NLL (default 100)")
    evaluate.add_argument("--device", help="default: the run's device")

    bench = commands.add_parser("bench", help="time full training steps (and with --ops each op): fused vs eager "
                                              "vs torch.compile")
    lists = _bench_lists()
    for name, default, note in [("workloads", "dcgan28,vae28", ""),
                                ("providers", None, " (the +graph ones on a GPU; default fused,eager,compile, and "
                                 "on a GPU also fused+graph,eager+graph, the trainers' default there)"),
                                ("precision", "fp32", ""), ("layouts", "nchw,channels_last", "")]:
        bench.add_argument(f"--{name}", default=default, type=comma_list(lists[name]),
                           help=f"comma-separated, of {', '.join(lists[name])}{note}"
                                + (f" (default {default})" if default else ""))
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    bench.add_argument("--repeats", type=int, default=5, help="timed steps per case, after warm-up (default 5)")
    bench.add_argument("--out", default="bench-results",
                       help="folder for steps.csv, .md, .png (and ops.*) (default bench-results)")
    bench.add_argument("--breakdown", action="store_true",
                       help="also profile one fused step per workload: shares of convolution, aigc_fast, optimizer, other")
    bench.add_argument("--ops", action="store_true",
                       help="also run the op suites (pytest-benchmark, from a source checkout's bench/)")
    bench.add_argument("--ops-filter", default="not ((test_block or test_post) and b128)",
                       help="pytest -k expression selecting the op cases (default: all but the batch-128 conv "
                       "blocks, which would double the run; '' selects all)")
    return parser


def _run(args) -> int:
    if args.command == "info":
        import aigc_fast

        if args.json:
            print(json.dumps(aigc_fast.info(print_report=False), indent=2))
        else:
            aigc_fast.info()
        return 0
    if args.command == "train":
        given = {k: v for k, v in vars(args).items() if k not in ("command", "kind", "config", "resume")}
        return _train(args, given)
    if args.command in ("sample", "evaluate", "bench") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun each process would do all of it and write the same files.
        refusal = BadBenchArguments if args.command == "bench" else ValueError
        raise refusal(f"{args.command} runs in one process (train is the distributed one): run it without torchrun")
    if args.command == "sample":
        from .sampling import sample_run

        if args.balanced:  # (the only samples that use the real data)
            _warn_of_other_data(args)
        out = sample_run(args.run_dir, args.n, args.out, seed=args.seed, balanced=args.balanced, data=args.data,
                         device=args.device)
        import numpy as np

        with np.load(out / "samples.npz") as written:
            count = len(written["images"])  # balanced: n // classes of each
        print(f"{count} images in {out}/images, {out}/samples.npz, grid {out}/grid.png")
        return 0
    if args.command == "evaluate":
        from .evaluation import evaluate as run_evaluation, format_table

        _warn_of_other_data(args)
        results = run_evaluation(args.run_dir, n=args.n, data=args.data, device=args.device,
                                 nll_samples=args.nll_samples)
        print(format_table(results), end="")
        print(f"written to {Path(args.run_dir) / 'eval'}/metrics.json and metrics.md")
        return 0
    if args.command == "bench":
        return _bench(args)
    return 2


def _stdout_is_closed() -> bool:
    """Whether stdout's reader has gone: poll reports an error on a pipe with no reader.
    (Where poll is missing, as on Windows, or stdout has no descriptor: taken as gone.)"""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def _warn_of_other_data(args) -> None:
    """--data is for a run that did not record its data. Given for one that did, it is used
    (the recorded folder may have moved), but said: its held-out split is not the images the
    run never trained on, so the numbers measure something else."""
    from .train.resume import _recorded_data

    if args.data is None:
        return
    try:
        recorded = json.loads((Path(args.run_dir) / "config.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return  # load_run names what is wrong with the run directory
    if isinstance(recorded, str) and _recorded_data(args.data) != _recorded_data(recorded):
        print(f"aigc-fast {args.command}: warning: the run recorded its data as {recorded}; --data {args.data} "
              "replaces it (leave --data out to use the run's own data and held-out split)", file=sys.stderr)


OP_SUITES = ["bench/test_bench_reparameterize.py", "bench/test_bench_losses.py", "bench/test_bench_bias_act.py",
             "bench/test_bench_blocks.py"]


def _bench_ops(out: Path, selection: str) -> int:
    """The op suites (pytest-benchmark, from a source checkout) into ops.json, and from it
    ops.md (the tables), ops.csv and ops.png (bench/report.py)."""
    import subprocess

    if not Path("bench/conftest.py").is_file():
        raise SystemExit("aigc-fast bench --ops: run it from the aigc_fast source folder (the op suites are bench/*.py)")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Run from the output folder: `python -m pytest` puts its working folder on sys.path, and
    # from the source folder that would import the uncompiled source instead of the package.
    for ext in ("json", "md", "csv", "png"):  # never leave an earlier run's results beside this one's
        (out / f"ops.{ext}").unlink(missing_ok=True)
    suites = subprocess.run([sys.executable, "-m", "pytest", *(str(Path(s).resolve()) for s in OP_SUITES), "-q",
                           "-p", "no:cacheprovider", "-k", selection, f"--benchmark-json={out / 'ops.json'}"], cwd=out)
    if suites.returncode == 5:  # pytest: no test collected
        raise SystemExit(f"aigc-fast bench: --ops-filter {selection!r} selects no op benchmark (a pytest -k "
                         "expression over the test ids in bench/test_bench_*.py, e.g. 'reparameterize and 4M')")
    failed = suites.returncode  # a failing case (a loud compile failure) still leaves the others' results
    with contextlib.suppress(OSError):  # pytest-benchmark's storage folder, empty unless asked to save runs
        (out / ".benchmarks").rmdir()
    if not (out / "ops.json").is_file():
        print(f"aigc-fast bench: the op benchmarks wrote no results (pytest exit status {failed}: every case "
              f"--ops-filter {selection!r} selects was skipped, e.g. a GPU-only size, or failed)", file=sys.stderr)
        return failed or 1
    with open(out / "ops.md", "w") as md:
        report = subprocess.run([sys.executable, "bench/report.py", str(out / "ops.json"), "--memory", "peak",
                               "--csv", str(out / "ops.csv"), "--chart", str(out / "ops.png")], stdout=md)
    written = [out / f"ops.{ext}" for ext in ("json", "md", "csv", "png")]
    print("written: " + ", ".join(str(p) for p in written if p.is_file()))
    if failed:
        print(f"aigc-fast bench: some op benchmarks failed (pytest exit status {failed}); the tables hold the rest",
              file=sys.stderr)
    return failed or report.returncode


def _bench_lists() -> Dict[str, Tuple[str, ...]]:
    """The choices of aigc-fast bench's comma-separated options."""
    from .benchmark import PROVIDERS, WORKLOADS
    from .train.config import PRECISIONS

    # Not "auto": a row must say the precision it ran in.
    return {"workloads": tuple(WORKLOADS), "providers": tuple(PROVIDERS),
            "precision": tuple(p for p in PRECISIONS if p != "auto"),
            "layouts": ("nchw", "channels_last")}


def comma_list(choices: Tuple[str, ...]):
    """An argparse type: a comma-separated list, each value one of `choices` once (argparse
    reports any other with the usage line). The scripts in bench/ take their lists so too."""
    def parse(text: str) -> List[str]:
        values = text.split(",")
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown))}: choose from {', '.join(choices)}")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:  # (each case is one row of the table: a second would be refused after the timing)
            raise argparse.ArgumentTypeError(f"{', '.join(map(repr, repeated))} given more than once")
        return values

    return parse


class BadBenchArguments(ValueError):
    """An aigc-fast bench argument refused before any timing starts."""


def _check_bench_arguments(args, out: Path) -> None:
    """What would otherwise fail after minutes of timing, or deep inside it."""
    import tempfile

    from . import benchmark
    from .train.trainer import _check_device

    if args.repeats < 1:
        raise BadBenchArguments(f"--repeats must be at least 1 (timed steps per case), got {args.repeats}")
    try:
        _check_device(args.device)
        benchmark.check_cases(args.providers, args.precision, args.device)
    except ValueError as error:
        raise BadBenchArguments(str(error)) from None
    try:  # the results are written at the end: a folder that cannot take them is refused now
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise BadBenchArguments(f"--out {out}: cannot write there ({error})") from None


def _bench(args) -> int:
    from . import benchmark

    out = Path(args.out)
    if args.providers is None:
        args.providers = benchmark.default_providers(args.device, args.precision)
    _check_bench_arguments(args, out)
    returncode = _bench_ops(out, args.ops_filter) if args.ops else 0  # the steps run either way
    settings = [(p, layout == "channels_last") for p in args.precision for layout in args.layouts]
    rows = benchmark.run(args.workloads, args.providers, settings, device=args.device, repeats=args.repeats)
    benchmark.write_csv(rows, out / "steps.csv")
    table = benchmark.markdown(rows)
    if args.breakdown:
        table += "\n" + benchmark.breakdown_table(args.workloads, settings, device=args.device)
    (out / "steps.md").write_text(table)
    # The chart and the table's ratios are over eager: without it there is nothing to draw.
    chart = benchmark.bar_chart(rows, out / "steps.png") if "eager" in args.providers else None
    print()
    print(table, end="")
    if chart:
        chart_note = f", {chart}"
    elif "eager" not in args.providers:
        chart_note = " (no chart: it compares with the eager provider)"
    else:
        chart_note = " (pip install matplotlib for the chart)"
    print(f"written: {out / 'steps.csv'}, {out / 'steps.md'}{chart_note}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
