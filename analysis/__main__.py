"""``python -m kvmscope.analysis COMMAND``: the analysis commands (report,
validate, diff, plot, export) without the compiled core."""

import sys

from .cli import main

sys.exit(main())
