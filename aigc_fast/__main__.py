"""python -m aigc_fast (and torchrun -m aigc_fast): the aigc-fast command."""

import sys

from .cli import main

sys.exit(main())
