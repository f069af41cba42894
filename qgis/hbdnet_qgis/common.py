"""What the two detection tools share: their parameters, the area of interest, and the layer they
hand back."""

import os
import tempfile

from qgis.core import (
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsVectorLayer,
)

INPUT, EXTENT, AOI, SCORE, BANDS, OUTPUT = "INPUT", "EXTENT", "AOI", "SCORE", "BANDS", "OUTPUT"
OUTPUT_EXTENSIONS = ["gpkg", "geojson", "fgb"]
DEFAULT_SCORE = 0.5  # the bundled model's operating point (hbdnet's MODEL_CARD.md)


def add_common_parameters(alg):
    alg.addParameter(QgsProcessingParameterRasterLayer(INPUT, "Raster (a GeoTIFF or another raster GDAL reads)"))
    alg.addParameter(QgsProcessingParameterExtent(EXTENT, "Search only this extent", optional=True))
    alg.addParameter(QgsProcessingParameterFeatureSource(
        AOI, "Search only inside these polygons", [QgsProcessing.TypeVectorPolygon], optional=True))
    alg.addParameter(QgsProcessingParameterNumber(
        SCORE, "Score threshold (0.5: the bundled model's operating point; 0 keeps every box)",
        QgsProcessingParameterNumber.Double, DEFAULT_SCORE, minValue=0.0, maxValue=1.0))
    alg.addParameter(QgsProcessingParameterString(BANDS, "Bands as R,G,B, 1-based (empty: the first three)",
                                                  optional=True))


def add_output_parameter(alg):
    alg.addParameter(QgsProcessingParameterVectorDestination(OUTPUT, "Bridges", QgsProcessing.TypeVectorPolygon))


def raster_file(alg, parameters, context):
    """The raster layer's file (or GDAL path) and layer."""
    layer = alg.parameterAsRasterLayer(parameters, INPUT, context)
    if layer is None:
        raise QgsProcessingException("no raster layer given")
    return raster_source(layer), layer


def raster_source(layer):
    """The file (or GDAL path) hbdnet reads for a raster layer; one line where it has none."""
    if layer.providerType() != "gdal":
        raise QgsProcessingException(f"{layer.name()} is a {layer.providerType()} layer, not a file: save it as a "
                                     "GeoTIFF first (Export > Save As)")
    return layer.source()


def bands_option(alg, parameters, context):
    text = (alg.parameterAsString(parameters, BANDS, context) or "").replace(" ", "")
    if not text:
        return []
    parts = text.split(",")
    if len(parts) not in (1, 3) or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise QgsProcessingException(f"bands: give 1 band or 3 bands as R,G,B numbered from 1, got {text!r}")
    return ["--bands", text]


def area_of_interest(alg, parameters, context, layer):
    """The polygons to search, in the raster's CRS, and their bounding box; (None, None) for the whole
    raster. An extent and polygons together: the part of the polygons inside the extent."""
    crs = layer.crs()
    area = None
    if parameters.get(EXTENT) not in (None, ""):
        extent = alg.parameterAsExtent(parameters, EXTENT, context, crs)
        if not extent.isNull() and not extent.isEmpty():
            area = QgsGeometry.fromRect(extent)
    source = alg.parameterAsSource(parameters, AOI, context)
    if source is not None:
        to_raster = QgsCoordinateTransform(source.sourceCrs(), crs, context.transformContext())
        parts = []
        for feature in source.getFeatures():
            geometry = QgsGeometry(feature.geometry())
            if not geometry.isEmpty():
                geometry.transform(to_raster)
                parts.append(geometry)
        if not parts:
            raise QgsProcessingException("the area of interest has no polygon")
        polygons = QgsGeometry.unaryUnion(parts)
        area = polygons if area is None else area.intersection(polygons)
    if area is None:
        return None, None
    box = area.boundingBox().intersect(layer.extent())
    if area.isEmpty() or box.isEmpty():
        raise QgsProcessingException("the area of interest does not overlap the raster")
    return area, box


def clip(source, box, driver):
    """The raster cut to ``box`` (in its CRS) as a temporary file, and the cut's offset in the raster's
    pixels (column, row): a VRT for the local tool (it references the file, nothing is copied), a
    GeoTIFF for the server (which reads no VRT)."""
    from osgeo import gdal

    suffix = ".vrt" if driver == "VRT" else ".tif"
    handle, path = tempfile.mkstemp(prefix="hbdnet_aoi_", suffix=suffix)
    os.close(handle)
    options = gdal.TranslateOptions(format=driver, projWin=[box.xMinimum(), box.yMaximum(), box.xMaximum(),
                                                            box.yMinimum()],
                                    creationOptions=["TILED=YES", "COMPRESS=DEFLATE"] if driver == "GTiff" else [])
    cut = gdal.Translate(path, source, options=options)
    if cut is None:
        raise QgsProcessingException(f"cannot cut the area of interest out of {source}: {gdal.GetLastErrorMsg()}")
    whole = gdal.Open(source)
    (x0, dx, _, y0, _, dy), (cx, _, _, cy, _, _) = whole.GetGeoTransform(), cut.GetGeoTransform()
    cut = whole = None  # closes both, and writes the cut
    return path, (round((cx - x0) / dx), round((cy - y0) / dy))


def finish_cut(uri, area, area_crs, offset, scene, context, feedback):
    """After a run on a cut of the raster: drop the bridges whose centre is outside ``area``, and give
    the others the raster's own pixel coordinates (``cx_px``, ``cy_px``: the cut's plus ``offset``)
    and name (``scene``), as a run on the whole raster would. Returns how many bridges are left."""
    layer = QgsVectorLayer(uri, "bridges", "ogr")
    if not layer.isValid():
        raise QgsProcessingException(f"cannot open the bridges hbdnet wrote: {uri}")
    inside = QgsGeometry(area)
    inside.transform(QgsCoordinateTransform(area_crs, layer.crs(), context.transformContext()))
    fields = layer.fields()
    cx, cy, name = (fields.indexOf(n) for n in ("cx_px", "cy_px", "scene"))
    drop, changes = [], {}
    for feature in layer.getFeatures():
        if not inside.contains(feature.geometry().centroid()):
            drop.append(feature.id())
        else:
            changes[feature.id()] = {cx: feature[cx] + offset[0], cy: feature[cy] + offset[1], name: scene}
    provider = layer.dataProvider()
    if (drop and not provider.deleteFeatures(drop)) or (changes and not provider.changeAttributeValues(changes)):
        raise QgsProcessingException(f"cannot update the bridges hbdnet wrote: {uri}")
    if drop:
        feedback.pushInfo(f"{len(drop)} bridge(s) outside the area of interest dropped")
    return len(changes)


def output_path(alg, parameters, context):
    path = alg.parameterAsOutputLayer(parameters, OUTPUT, context)
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension not in OUTPUT_EXTENSIONS:
        raise QgsProcessingException(f"hbdnet writes GeoPackage, GeoJSON or FlatGeobuf, not .{extension}: "
                                     f"choose a .gpkg, .geojson or .fgb file")
    return path


def layer_uri(path, layer=None):
    """The bridges' layer in a file hbdnet wrote (a GeoPackage also holds its style table); ``layer``: its
    name (hbdnet names it after the file it writes: the default)."""
    if path.lower().endswith(".gpkg"):
        return f"{path}|layername={layer or os.path.splitext(os.path.basename(path))[0]}"
    return path
