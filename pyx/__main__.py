"""``python -m kvmscope COMMAND``: the same as the ``kvmscope`` command."""

import sys

from .cli import main

sys.exit(main())
