"""Fine-tune a model (local): runs ``hbdnet finetune`` on rasters and the bridges corrected in a layer."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from . import common
from .runner import run_hbdnet

SCENES, LABELS, REVIEWED, MODEL, EPOCHS, OUTPUT = "SCENES", "LABELS", "REVIEWED", "MODEL", "EPOCHS", "OUTPUT"
LAYER_FORMATS = ["gpkg", "geojson", "shp", "fgb"]


class FinetuneLocal(QgsProcessingAlgorithm):
    def name(self):
        return "finetunemodellocal"

    def displayName(self):
        return "Fine-tune the model on corrected bridges (local)"

    def shortHelpString(self):
        return ("Teaches a model your imagery from bridges you corrected: run Detect bridges, delete the false "
                "boxes, fix the loose ones and draw the missed bridges (any polygon), then run this with the "
                "rasters and that layer. Where every bridge is drawn, give those areas as reviewed areas: there, "
                "a place without a bridge teaches the model to leave it alone (without them, the rasters' whole "
                "extent counts as reviewed). Writes a model file (.safetensors) for Detect bridges' Model field. "
                "Minutes on a CPU for tens of bridges; Cancel stops it, and running it again with the same "
                "inputs resumes where it was last saved.")

    def createInstance(self):
        return FinetuneLocal()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterMultipleLayers(SCENES, "Rasters the bridges are on",
                                                               QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterFeatureSource(
            LABELS, "Bridges, corrected (polygons)", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            REVIEWED, "Reviewed areas: every bridge in them is drawn", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterString(
            MODEL, "Model to start from: the name of a bundled model, or the path of a model file", "default"))
        self.addParameter(QgsProcessingParameterNumber(EPOCHS, "Epochs per detector",
                                                       QgsProcessingParameterNumber.Integer, 8, minValue=1))
        self.addParameter(QgsProcessingParameterString(common.BANDS, "Bands as R,G,B, 1-based (empty: the first three)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(OUTPUT, "Fine-tuned model",
                                                                "hbdnet model (*.safetensors)"))

    def processAlgorithm(self, parameters, context, feedback):
        rasters = self.parameterAsLayerList(parameters, SCENES, context)
        if not rasters:
            raise QgsProcessingException("no raster given")
        args = ["finetune", "--no-progress"]
        for layer in rasters:
            args += ["--scene", common.raster_source(layer)]
        args += ["--labels", self._layer_file(parameters, LABELS, context, feedback)]
        if parameters.get(REVIEWED):
            args += ["--reviewed", self._layer_file(parameters, REVIEWED, context, feedback)]
        output = self.parameterAsFileOutput(parameters, OUTPUT, context)
        if not output.endswith(".safetensors"):
            output += ".safetensors"
        args += ["-o", output, "--model", self.parameterAsString(parameters, MODEL, context) or "default",
                 "--epochs", str(self.parameterAsInt(parameters, EPOCHS, context)),
                 *common.bands_option(self, parameters, context)]
        run_hbdnet(args, feedback)
        return {OUTPUT: output}

    def _layer_file(self, parameters, name, context, feedback):
        """A file hbdnet reads with this layer's polygons alone: the layer's own file when it holds only
        them, else a copy (a layer of a GeoPackage with several, a selection, a memory layer)."""
        path, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, name, context, LAYER_FORMATS, "gpkg", feedback)
        if layer_name and path.lower().endswith(".gpkg"):
            from osgeo import ogr

            source = ogr.Open(path)
            names = [source.GetLayer(i).GetName() for i in range(source.GetLayerCount())] if source else []
            if [n for n in names if n != "layer_styles"] != [layer_name]:  # hbdnet reads the first layer
                path = self.parameterAsCompatibleSourceLayerPath(parameters, name, context, ["geojson"], "geojson",
                                                                 feedback)
        return path
