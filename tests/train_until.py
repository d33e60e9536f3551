"""Train under torchrun and stop after a given epoch (the DDP resume test's interruption).

    python -m torch.distributed.run ... tests/train_until.py CONFIG WORK_DIR STOP_AFTER_EPOCH [--resume]
"""

from __future__ import annotations

import sys

from tsn.config import load_config
from tsn.training.build import train

if __name__ == "__main__":
    config, work_dir, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    train(load_config(config, []), work_dir, resume="--resume" in sys.argv[4:], device="cpu", progress=False,
          stop_after_epoch=stop_after)
