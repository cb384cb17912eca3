"""road_interp: train, serve, compose and understand RoAd (2D rotary adaptation) adapters.

RoAd (Liao & Monz, NeurIPS 2024) rotates and scales pairs of coordinates of a frozen model's
hidden vectors. See `road_interp.rotation` for the math and `road_interp.model.RoadModel` for
the entry point.
"""

from . import rotation
from .config import FORMAT_VERSION, Positions, RoadConfig
from .io import AdapterFile, read_adapter, write_adapter, write_peft
from .layers import RoadAdapter, RoadLinear, RoadSite
from .model import RoadModel
from .models import fetch_model, load_model, load_tokenizer

__all__ = [
    "FORMAT_VERSION",
    "Positions",
    "AdapterFile",
    "RoadAdapter",
    "RoadConfig",
    "RoadLinear",
    "RoadModel",
    "RoadSite",
    "fetch_model",
    "load_model",
    "load_tokenizer",
    "read_adapter",
    "rotation",
    "write_adapter",
    "write_peft",
]
__version__ = "0.1.0"
