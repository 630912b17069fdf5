"""Training: GANTrainer / VAETrainer with JSON-round-tripping configs, atomic checkpoints,
exact resume, NaN detection, metrics and sample grids in a run directory.

    trainer = aigc_fast.train.VAETrainer(aigc_fast.train.VAEConfig(epochs=5, out_dir="runs/vae"))
    trainer.fit("mnist")
"""

from .checkpoint import load_checkpoint, save_atomic
from .config import GANConfig, VAEConfig
from .trainer import GANTrainer, NonFiniteLossError, VAETrainer

__all__ = ["GANConfig", "GANTrainer", "NonFiniteLossError", "VAEConfig", "VAETrainer", "load_checkpoint",
           "save_atomic"]
