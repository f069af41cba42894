"""The plugin object QGIS loads: it registers the Processing provider, also in ``qgis_process``."""

from qgis.core import QgsApplication

from .provider import HbdnetProvider


class HbdnetPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        self.provider = HbdnetProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
