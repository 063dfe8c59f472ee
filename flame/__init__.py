"""FLAME for STGA: a safe reader of the official model file, the FLAME layer (PyTorch), teeth,
and the converter of GaussianAvatars-format data (``python -m flame.convert``).

The FLAME model itself is not part of the project: download it from https://flame.is.tue.mpg.de
under its licence.
"""
from flame.model import FlameLayer, add_teeth
from flame.model_file import FlameModelData, FlameModelError, load_flame_model
from flame.params import FlameParams, read_flame_params
from flame.teeth import LipRingError, find_lip_rings

__all__ = ["FlameLayer", "FlameModelData", "FlameModelError", "FlameParams", "LipRingError",
           "add_teeth", "find_lip_rings", "load_flame_model", "read_flame_params"]
