"""Training curves of bf16 autocast against fp32 on the same seed: the plot in docs/benchmarks.md
(docs/bf16-vs-fp32-curves.png), from four runs made with

    for p in fp32 bf16; do
      aigc-fast train vae --data mnist --max-steps 300 --epochs 20 --precision $p --out-dir runs/curve-vae-$p --log-every 1
      aigc-fast train gan --data mnist --max-steps 300 --epochs 20 --batch-size 64 --ngf 32 --ndf 32 \\
        --precision $p --out-dir runs/curve-gan-$p --log-every 1
    done
    python bench/bf16_curves.py runs docs/bf16-vs-fp32-curves.png

The plotted runs (2026-12-01) keep their logs: python bench/bf16_curves.py bench/results/bf16-curves out.png
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main(runs, out):
    runs = Path(runs)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for precision, style in (("fp32", "-"), ("bf16", "--")):
        vae, gan = rows(runs / f"curve-vae-{precision}"), rows(runs / f"curve-gan-{precision}")
        for ax, data, key in ((axes[0], vae, "loss"), (axes[1], gan, "d_loss"), (axes[2], gan, "g_loss")):
            ax.plot([r["step"] for r in data], [r[key] for r in data], style, label=precision)
    for ax, title in zip(axes, ["conv VAE 28x28: -ELBO", "DCGAN 28x28: D loss", "DCGAN 28x28: G loss"]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=8)
    axes[0].set_ylim(100, 300)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    # Past the first 100 steps (the VAE's loss falls fast there) and over the GAN's second
    # half, whatever length the runs had.
    full, half = rows(runs / "curve-vae-fp32"), rows(runs / "curve-vae-bf16")
    worst = max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(full[100:], half[100:]))
    print(f"VAE, steps 101-{len(full)}: largest relative loss difference {worst:.2%}")
    full, half = rows(runs / "curve-gan-fp32"), rows(runs / "curve-gan-bf16")
    start = len(full) // 2
    for key in ("d_loss", "g_loss"):
        print(f"GAN {key}, mean of steps {start + 1}-{len(full)}: fp32 {statistics.mean(r[key] for r in full[start:]):.4f}, "
              f"bf16 {statistics.mean(r[key] for r in half[start:]):.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
