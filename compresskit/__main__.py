"""``python -m compresskit``: the same command line as the ``compresskit`` console script (for environments where
the package is on the path but not installed, such as a training machine)."""

import sys

from compresskit.cli import main

sys.exit(main())
