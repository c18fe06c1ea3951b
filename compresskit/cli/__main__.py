"""``python -m compresskit.cli``: the same command line as the ``compresskit`` console script."""

import sys

from compresskit.cli import main

sys.exit(main())
