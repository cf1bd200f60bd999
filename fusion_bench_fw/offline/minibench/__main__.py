"""``python -m fusion_bench_fw.offline.minibench build|configs``: the command line (:func:`.configs.main`)."""

import sys

from .configs import main

sys.exit(main())
