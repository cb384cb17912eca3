"""``python -m road_interp.cli`` (and ``accelerate launch -m road_interp.cli``) = ``road-interp``."""

import sys

from . import main

sys.exit(main())
