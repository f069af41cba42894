"""The ``hbdnet`` Processing provider and its setting: where the ``hbdnet`` command is."""

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .detect_local import DetectBridgesLocal
from .detect_server import DetectBridgesServer
from .finetune_local import FinetuneLocal
from .runner import EXECUTABLE_SETTING

HERE = os.path.dirname(__file__)


class HbdnetProvider(QgsProcessingProvider):
    def id(self):
        return "hbdnet"

    def name(self):
        return "hbdnet"

    def longName(self):
        return "hbdnet: bridge detection"

    def icon(self):
        return QIcon(os.path.join(HERE, "icon.svg"))

    def load(self):
        # The setting shows under Settings > Options > Processing > Providers > hbdnet. Processing's own
        # Python (processing.core) is there in QGIS and qgis_process alike; without it, the environment
        # variable HBDNET_EXECUTABLE or the PATH still find the command.
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:
            return super().load()
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(self.name(), EXECUTABLE_SETTING,
                                            "hbdnet executable (empty: HBDNET_EXECUTABLE, then the PATH)", "",
                                            valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg", "geojson", "fgb"]

    def defaultVectorFileExtension(self, hasGeometry=True):
        return "gpkg"

    def loadAlgorithms(self):
        self.addAlgorithm(DetectBridgesLocal())
        self.addAlgorithm(DetectBridgesServer())
        self.addAlgorithm(FinetuneLocal())
