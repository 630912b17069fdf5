"""Training: GANTrainer / VAETrainer with JSON-round-tripping configs, atomic checkpoints,
exact resume (Ctrl-C stops between steps and saves), mixed precision, torch.compile, DDP
under torchrun, NaN detection, metrics and sample grids in a run directory.

    trainer = aigc_fast.train.VAETrainer(aigc_fast.train.VAEConfig(epochs=5, out_dir="runs/vae"))
    trainer.fit("mnist")
"""

from .checkpoint import load_checkpoint, save_atomic
from .config import GANConfig, VAEConfig
from .gan import GANTrainer
from .interrupt import TrainingInterrupted
from .trainer import NonFiniteLossError, load_run
from .vae import VAETrainer

# A run's kind (config.json's "kind", the CLI's `train gan|vae`) -> its config and trainer.
TRAINERS = {"gan": (GANConfig, GANTrainer), "vae": (VAEConfig, VAETrainer)}

__all__ = ["GANConfig", "GANTrainer", "NonFiniteLossError", "TRAINERS", "TrainingInterrupted", "VAEConfig",
           "VAETrainer", "load_checkpoint", "load_run", "save_atomic"]
