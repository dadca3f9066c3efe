"""``python -m baselines.ldm stage-config ...`` (see :mod:`baselines.ldm.config`)."""

import sys

from baselines.ldm.config import main

sys.exit(main())
