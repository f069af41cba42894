"""Training data: DOTA-format labels, exact pyramid-window reads, on-the-fly windows, flips.

Import from the modules (``hbdnet.data.raster``, ``.dota``, ``.windows``, ``.augment``): the raster
reader is also used by the engine's workers, which should not pay for importing the rest.
"""
