"""``python -m trainsvc_launchers`` is ``trainsvc-launch``."""

import sys

from trainsvc_launchers._cli import main

sys.exit(main())
