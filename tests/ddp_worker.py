"""Run by tests/test_ddp.py under torchrun (2 gloo processes): trains a tiny GAN, possibly
resuming, and writes each process's parameter checksum so the test can compare them."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aigc_fast.train import GANConfig, GANTrainer

out, max_steps, resume = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "resume"
config = GANConfig(out_dir=str(out), image_size=16, channels=1, nz=8, ngf=4, ndf=4, batch_size=4, epochs=2,
                   max_steps=max_steps, log_every=1, sample_every=1000, num_samples=4, progress=False, holdout=0.0)
trainer = GANTrainer(config)
trainer.fit(torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0)), resume=resume)
weights = torch.cat([p.detach().flatten() for p in [*trainer.G.parameters(), *trainer.D.parameters()]])
(out / f"rank{dist.get_rank()}.json").write_text(json.dumps(
    {"world": trainer.group.world, "step": trainer.step, "weights": weights.tolist()}))
if resume:  # as a script of one's own might end: the Group waits for gloo at exit
    dist.destroy_process_group()
else:
    trainer.group.close()  # as `aigc-fast train` does under torchrun
