"""``python -m flows.command ARGS`` (e.g. ``torchrun --nproc_per_node 8 -m flows.command train ...``): the ``gill``
command, for launchers that start a module rather than a console script."""

import sys

from flows.command import main

sys.exit(main())
