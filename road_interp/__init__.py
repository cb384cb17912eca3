"""road_interp: train, serve, compose and understand RoAd (2D rotary adaptation) adapters.

RoAd (Liao & Monz, NeurIPS 2024) rotates and scales pairs of coordinates of a frozen model's
hidden vectors. The user-facing verbs are here; `road_interp.model.RoadModel` is the entry
point, `road_interp.rotation` holds the math, and the submodules (`subspaces`, `compose`,
`analysis`, `pyvene_view`, `bank`, `tasks`, ...) hold the rest.
"""

import logging as _logging

from . import rotation
from .bank import AdapterBank
from .compose import invert, overlap_report, product, restrict, scale, union
from .config import FORMAT_VERSION, Positions, RoadConfig
from .io import AdapterFile, read_adapter, write_adapter, write_peft
from .model import RoadModel
from .models import fetch_model, load_model, load_tokenizer
from .subspaces import Subspace
from .tasks import get_task, list_tasks
from .training import TrainConfig, train

__all__ = [
    "FORMAT_VERSION",
    "AdapterBank",
    "AdapterFile",
    "Positions",
    "RoadConfig",
    "RoadModel",
    "Subspace",
    "TrainConfig",
    "fetch_model",
    "get_task",
    "invert",
    "list_tasks",
    "load_model",
    "load_tokenizer",
    "overlap_report",
    "product",
    "read_adapter",
    "restrict",
    "rotation",
    "scale",
    "train",
    "union",
    "write_adapter",
    "write_peft",
]
__version__ = "0.1.0"

# the library logs (a training run's evaluations, fetch's repairs) but prints nothing unless
# the application configures logging; the CLI does (road_interp.cli.configure_logging)
_logging.getLogger("road_interp").addHandler(_logging.NullHandler())
