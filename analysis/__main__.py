"""``python -m kvmscope.analysis report|validate TRACE``: the analysis
commands without the compiled core."""

import sys

from .cli import main

sys.exit(main())
