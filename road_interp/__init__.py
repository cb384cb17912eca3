"""road_interp: train, serve, compose and understand RoAd (2D rotary adaptation) adapters.

RoAd (Liao & Monz, NeurIPS 2024) rotates and scales pairs of coordinates of a frozen model's
hidden vectors. See `road_interp.rotation` for the math and `road_interp.model.RoadModel` for
the entry point.
"""

from . import rotation
from .config import FORMAT_VERSION, RoadConfig
from .io import AdapterFile, load_adapter, read_adapter, save_adapter, write_adapter, write_peft
from .layers import RoadAdapter, RoadLinear, RoadSite
from .model import RoadModel
from .models import fetch_model, load_model, load_tokenizer

__all__ = [
    "FORMAT_VERSION",
    "AdapterFile",
    "RoadAdapter",
    "RoadConfig",
    "RoadLinear",
    "RoadModel",
    "RoadSite",
    "fetch_model",
    "load_adapter",
    "load_model",
    "load_tokenizer",
    "read_adapter",
    "rotation",
    "save_adapter",
    "write_adapter",
    "write_peft",
]
__version__ = "0.1.0"
