"""hbdnet in QGIS: a Processing provider that detects bridges on a raster layer, by running the
``hbdnet`` command (any Python environment that has it; QGIS's own Python needs no torch) or through
an ``hbdnet serve`` instance."""


def classFactory(iface):
    from .plugin import HbdnetPlugin

    return HbdnetPlugin(iface)
