"""A VRT is a GIS user's own mosaic on the command line, and a way into the server's files in an upload."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from serving.engine.scene import SceneError, open_raster, open_scene, trust_local_files


@pytest.fixture()
def mosaic(tmp_path):
    tile = tmp_path / "tile.tif"
    with rasterio.open(tile, "w", driver="GTiff", width=64, height=48, count=3, dtype="uint8",
                       crs="EPSG:32610", transform=from_origin(500000, 4000000, 0.5, 0.5)) as ds:
        ds.write(np.full((3, 48, 64), 90, np.uint8))
    bands = "".join(f"""
  <VRTRasterBand dataType="Byte" band="{b}">
    <SimpleSource><SourceFilename relativeToVRT="1">tile.tif</SourceFilename><SourceBand>{b}</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="64" ySize="48"/><DstRect xOff="0" yOff="0" xSize="64" ySize="48"/>
    </SimpleSource>
  </VRTRasterBand>""" for b in (1, 2, 3))
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="64" rasterYSize="48">{bands}\n</VRTDataset>\n')
    return vrt


def test_the_command_line_opens_a_users_own_vrt(mosaic):
    assert open_scene(str(mosaic)).width == 64
    with open_raster(str(mosaic)) as ds:
        assert ds.driver == "VRT"


def test_an_untrusted_local_file_never_opens_as_vrt(mosaic):
    with pytest.raises(rasterio.errors.RasterioIOError, match="not recognized"):
        open_raster(str(mosaic), untrusted=True)
    trust_local_files(False)  # as hbdnet serve sets it
    try:
        with pytest.raises(SceneError, match="not a GeoTIFF, PNG, JPEG or JPEG 2000 file"):
            open_scene(str(mosaic))
    finally:
        trust_local_files(True)
