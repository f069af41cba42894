"""Detect bridges (local): runs ``hbdnet detect`` on the raster."""

import os

from qgis.core import QgsProcessingAlgorithm, QgsProcessingParameterString

from . import common
from .runner import run_hbdnet

MODEL = "MODEL"


class DetectBridgesLocal(QgsProcessingAlgorithm):
    def name(self):
        return "detectbridgeslocal"

    def displayName(self):
        return "Detect bridges (local)"

    def shortHelpString(self):
        return ("Finds bridges in a raster with hbdnet on this computer and adds them as oriented boxes "
                "(score, length, width, bearing) with their QGIS style. It runs the hbdnet command, installed in "
                "any Python environment; set its path under Settings > Options > Processing > Providers > hbdnet "
                "unless it is on the PATH. An extent or polygons limit the search: the raster is cut to their "
                "bounding box and bridges whose centre lies outside are dropped.")

    def createInstance(self):
        return DetectBridgesLocal()

    def initAlgorithm(self, config=None):
        common.add_common_parameters(self)
        self.addParameter(QgsProcessingParameterString(
            MODEL, "Model: the name of a bundled model, or the path of a model file", "default"))
        common.add_output_parameter(self)

    def processAlgorithm(self, parameters, context, feedback):
        source, layer = common.raster_file(self, parameters, context)
        area, box = common.area_of_interest(self, parameters, context, layer)
        output = common.output_path(self, parameters, context)
        scene, offset = common.clip(source, box, "VRT") if box is not None else (source, (0, 0))
        try:
            args = ["detect", scene, "-o", output, "--progress-lines",
                    "--score-thr", repr(self.parameterAsDouble(parameters, common.SCORE, context)),
                    "--model", self.parameterAsString(parameters, MODEL, context) or "default",
                    *common.bands_option(self, parameters, context)]
            run_hbdnet(args, feedback)
        finally:
            if scene != source:
                os.remove(scene)
        uri = common.layer_uri(output)
        if area is not None:
            common.finish_cut(uri, area, layer.crs(), offset, source, context, feedback)
        return {common.OUTPUT: uri}
