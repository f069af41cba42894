"""INPUTS of ``hbdnet batch`` to scenes: folders, list files, STAC items and catalogs, deduplication."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pystac
import pytest

from serving.batch.inputs import InputError, SceneInput, expand_inputs, scene_stem


def touch(path: Path, content: bytes = b"II*\0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def uris(scenes: list[SceneInput]) -> list[str]:
    return [s.uri for s in scenes]


def test_scene_stem_of_paths_and_urls():
    assert scene_stem("/data/a/scene_01.tif") == "scene_01"
    assert scene_stem("https://host/cogs/T31UDQ.tif?X-Amz-Signature=abc") == "T31UDQ"
    assert scene_stem("/vsicurl/https://host/b/c%20d.TIF") == "c_d"
    assert scene_stem("s3://bucket/key/e.f.tif") == "e.f"  # only the extension goes
    assert scene_stem("/data/rotterdam_pan2_0.5m_harbour.tif") == "rotterdam_pan2_0.5m_harbour"
    assert scene_stem("/data/.hidden") == "hidden" and scene_stem("/data/noext") == "noext"
    assert scene_stem("/vsizip//data/x.zip/inner.tif") == "inner"


def test_folder_is_searched_recursively_by_extension(tmp_path):
    root = tmp_path / "scenes"
    expected = [touch(root / "a.tif"), touch(root / "b.TIFF"), touch(root / "sub" / "c.vrt"),
                touch(root / "sub" / "deeper" / "d.jp2"), touch(root / "sub" / "e.img")]
    touch(root / "notes.md", b"text")
    touch(root / "a.tif.aux.xml", b"<x/>")
    touch(root / ".hidden" / "f.tif")
    touch(root / ".g.tif")
    scenes = expand_inputs([str(root)])
    assert uris(scenes) == [str(p) for p in expected]
    assert [s.name for s in scenes] == ["a", "b", "c", "d", "e"]
    assert {s.source for s in scenes} == {str(root)}


def test_list_file_comments_relative_paths_urls_and_nesting(tmp_path):
    data = tmp_path / "data"
    a = touch(data / "a.tif")
    folder_scene = touch(data / "more" / "m.tif")
    lst = data / "scenes.txt"
    lst.write_text(
        "# scenes to run\n"
        "\n"
        "a.tif\n"
        "   https://example.com/cog/b.tif  \n"
        "more\n"  # a folder entry expands like a command-line folder
        "missing.tif\n"  # kept: the batch records it as failed
        f"file://{a}\n",  # the same scene again: deduplicated
        encoding="utf-8",
    )
    scenes = expand_inputs([str(lst)])
    assert uris(scenes) == [str(a), "https://example.com/cog/b.tif", str(folder_scene), str(data / "missing.tif")]
    assert all(s.source == str(lst) for s in scenes)


def test_list_file_recognised_by_content(tmp_path):
    a = touch(tmp_path / "a.tif")
    lst = tmp_path / "todo"  # no extension: plain text is a list
    lst.write_text("a.tif\n")
    assert uris(expand_inputs([str(lst)])) == [str(a)]


def test_scenes_are_deduplicated_across_inputs(tmp_path):
    a = touch(tmp_path / "d" / "a.tif")
    b = touch(tmp_path / "d" / "b.tif")
    link = tmp_path / "link.tif"
    os.symlink(a, link)
    lst = tmp_path / "l.list"
    lst.write_text(f"{b}\n{a}\n")
    scenes = expand_inputs([str(a), str(tmp_path / "d"), str(lst), str(link), "./" + os.path.relpath(a)])
    assert uris(scenes) == [str(a), str(b)]


def test_missing_input_and_self_including_list_are_errors(tmp_path):
    with pytest.raises(InputError, match="input not found: .*nope.tif"):
        expand_inputs([str(tmp_path / "nope.tif")])
    lst = tmp_path / "loop.txt"
    lst.write_text(f"{lst}\n")
    with pytest.raises(InputError, match="includes itself"):
        expand_inputs([str(lst)])
    with pytest.raises(InputError, match="list files must be local"):
        expand_inputs(["https://example.com/scenes.txt"])


def _item(item_id: str, assets: dict[str, pystac.Asset]) -> pystac.Item:
    item = pystac.Item(item_id, {"type": "Point", "coordinates": [3.0, 52.0]}, [3.0, 52.0, 3.0, 52.0],
                       None, {"start_datetime": "2024-01-01T00:00:00Z", "end_datetime": "2024-01-02T00:00:00Z"})
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def test_stac_item_takes_geotiff_assets_relative_to_the_json(tmp_path):
    folder = tmp_path / "stac"
    folder.mkdir()
    item = _item("S2_tile", {
        "B04": pystac.Asset("./B04.tif", media_type=pystac.MediaType.COG, roles=["data"]),
        "B03": pystac.Asset("bands/B03.tif", roles=["data"]),  # no media type: the .tif href decides
        "preview": pystac.Asset("./preview.tif", media_type=pystac.MediaType.COG, roles=["overview"]),
        "meta": pystac.Asset("./meta.xml", media_type=pystac.MediaType.XML, roles=["metadata"]),
        "png": pystac.Asset("./quicklook.png", media_type=pystac.MediaType.PNG),
        "remote": pystac.Asset("https://example.com/x/remote.tif",
                               media_type="image/tiff; application=geotiff"),
    })
    path = folder / "item.json"
    item.set_self_href(str(path))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False)
    assert json.loads(path.read_text())["assets"]["B04"]["href"] == "./B04.tif"
    scenes = expand_inputs([str(path)])
    assert uris(scenes) == [str(folder / "B04.tif"), str(folder / "bands" / "B03.tif"),
                            "https://example.com/x/remote.tif"]
    assert [s.name for s in scenes] == ["S2_tile-B04", "S2_tile-B03", "S2_tile-remote"]
    assert {s.source for s in scenes} == {str(path)}


def test_stac_item_with_a_visual_asset_runs_only_that(tmp_path):
    item = _item("tile7", {
        "visual": pystac.Asset("https://example.com/tile7/TCI.tif", media_type=pystac.MediaType.COG,
                               roles=["visual"]),
        "B02": pystac.Asset("https://example.com/tile7/B02.tif", media_type=pystac.MediaType.COG),
    })
    path = tmp_path / "tile7.json"
    item.save_object(dest_href=str(path), include_self_link=False)
    scenes = expand_inputs([str(path)])
    assert [(s.uri, s.name) for s in scenes] == [("https://example.com/tile7/TCI.tif", "tile7")]


def test_stac_catalog_walks_every_item(tmp_path):
    catalog = pystac.Catalog("cat", "test catalog")
    sub = pystac.Collection("col", "c", pystac.Extent(pystac.SpatialExtent([[3, 52, 3, 52]]),
                                                      pystac.TemporalExtent([[None, None]])))
    catalog.add_child(sub)
    catalog.add_item(_item("a", {"img": pystac.Asset("./a.tif", media_type=pystac.MediaType.GEOTIFF)}))
    sub.add_item(_item("b", {"img": pystac.Asset("./b.tif", media_type=pystac.MediaType.COG)}))
    root = tmp_path / "catalog"
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    # items live in their own folders; their relative asset hrefs resolve there
    scenes = expand_inputs([str(root / "catalog.json")])
    assert sorted((s.name, s.uri) for s in scenes) == [("a", str(root / "a" / "a.tif")),
                                                       ("b", str(root / "col" / "b" / "b.tif"))]
    # the collection alone is a catalog too
    assert uris(expand_inputs([str(root / "col" / "collection.json")])) == [str(root / "col" / "b" / "b.tif")]


def test_stac_item_collection_resolves_relative_hrefs_against_its_file(tmp_path):
    items = [_item(f"i{k}", {"data": pystac.Asset(f"tiles/{k}.tif", media_type=pystac.MediaType.COG)})
             for k in range(2)]
    data = pystac.ItemCollection(items).to_dict()
    path = tmp_path / "search.json"
    path.write_text(json.dumps(data))
    assert uris(expand_inputs([str(path)])) == [str(tmp_path / "tiles" / "0.tif"), str(tmp_path / "tiles" / "1.tif")]


def test_json_that_is_not_stac_is_an_error(tmp_path):
    path = tmp_path / "bridges.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature"}]}))
    with pytest.raises(InputError, match="not a readable STAC"):
        expand_inputs([str(path)])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="cannot read STAC file"):
        expand_inputs([str(broken)])
