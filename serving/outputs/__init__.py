"""Detections as GIS files: GeoJSON, GeoPackage, FlatGeobuf, with the QGIS style and ground measurements."""
