import math

import numpy as np
import pytest
import torch

from hbdnet.data.dota import DotaFormatError, load_dota_folder, read_dota_labels


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_headers_skipped_and_classes_filtered(tmp_path):
    p = write(
        tmp_path / "a.txt",
        "imagesource:GoogleEarth\r\ngsd:0.5\r\n"
        "10 10 50 10 50 20 10 20 bridge 0\r\n"
        "\r\n"
        "0 0 5 0 5 5 0 5 ship 1\r\n"
        "100 100 140 100 140 110 100 110 bridge 1\r\n",
    )
    polys, names, diffs = read_dota_labels(p)
    assert names == ["bridge", "bridge"]
    np.testing.assert_array_equal(diffs, [0, 1])
    np.testing.assert_array_equal(polys[0], [10, 10, 50, 10, 50, 20, 10, 20])
    polys, names, _ = read_dota_labels(p, classes=None)
    assert names == ["bridge", "ship", "bridge"] and polys.shape == (3, 8)
    polys, names, _ = read_dota_labels(p, classes=("ship",))
    assert names == ["ship"]


def test_missing_difficulty_defaults_to_zero(tmp_path):
    p = write(tmp_path / "a.txt", "10 10 50 10 50 20 10 20 bridge\n")
    _, _, diffs = read_dota_labels(p)
    np.testing.assert_array_equal(diffs, [0])


@pytest.mark.parametrize(
    "line, match",
    [
        ("10 10 50 10 50 20 10 bridge", "9 or 10 fields"),
        ("10 10 50 10 50 20 10 bridge 0", "non-numeric"),
        ("10 10 50 10 50 20 10 x20 bridge 0", "non-numeric"),
        ("10 10 50 10 50 20 10 nan bridge 0", "non-finite"),
        ("10 10 50 10 50 20 10 20 bridge hard", "difficulty"),
        ("10 10 50 10 50 20 10 20 bridge 0 extra", "9 or 10 fields"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, match):
    p = write(tmp_path / "bad.txt", f"imagesource:x\ngsd:1\n0 0 9 0 9 9 0 9 bridge 0\n{line}\n")
    with pytest.raises(DotaFormatError, match=match) as err:
        read_dota_labels(p)
    assert f"{p}:4" in str(err.value)


def make_folder(root, write_raster, labels: dict[str, str], size=(64, 96)):
    for stem, text in labels.items():
        write(root / "labelTxt" / f"{stem}.txt", text)
        write_raster(root / "images" / f"{stem}.png", np.zeros((3, *size), np.uint8), driver="PNG")
    return root


def test_load_folder_boxes_and_small_boxes_dropped(tmp_path, write_raster):
    root = make_folder(
        tmp_path,
        write_raster,
        {
            "b": "10 10 50 10 50 20 10 20 bridge 0\n"  # 40 x 10, horizontal
            "70 5 80 5 80 45 70 45 bridge 1\n"  # 10 x 40, vertical
            "5 50 6.5 50 6.5 60 5 60 bridge 0\n",  # 1.5 px wide: dropped, as mmrotate
            "a": "imagesource:x\ngsd:1\n",  # no box: kept with zero boxes
        },
    )
    items = load_dota_folder(root)
    assert [it.image_id for it in items] == ["a", "b"]
    assert items[0].boxes.shape == (0, 5) and items[0].polygons.shape == (0, 8)
    b = items[1]
    assert b.boxes.dtype == torch.float32 and b.boxes.shape == (2, 5)
    torch.testing.assert_close(b.boxes[0], torch.tensor([30.0, 15.0, 40.0, 10.0, 0.0]))
    # The vertical one: w is the length (le90), theta = -pi/2.
    torch.testing.assert_close(b.boxes[1], torch.tensor([75.0, 25.0, 40.0, 10.0, -math.pi / 2]))
    assert b.difficult.tolist() == [False, True]
    np.testing.assert_array_equal(b.polygons[1], [70, 5, 80, 5, 80, 45, 70, 45])


def test_image_suffixes(tmp_path, write_raster):
    write(tmp_path / "labelTxt" / "x.txt", "0 0 9 0 9 9 0 9 bridge 0\n")
    write_raster(tmp_path / "images" / "x.tif", np.zeros((3, 16, 16), np.uint8))
    (item,) = load_dota_folder(tmp_path)
    assert item.image_path.name == "x.tif"


def test_dota_example_missing_image(shared_data):
    root = shared_data / "dota-example"
    polys, names, diffs = read_dota_labels(root / "labelTxt" / "P1234_image-missing.txt")
    assert len(names) == 6 and set(names) == {"bridge"} and polys.shape == (6, 8)
    _, all_names, _ = read_dota_labels(root / "labelTxt" / "P1234_image-missing.txt", classes=None)
    assert len(all_names) == 144
    with pytest.raises(FileNotFoundError, match="P1234_image-missing"):
        load_dota_folder(root)
    with pytest.warns(UserWarning, match="P1234_image-missing"):
        items = load_dota_folder(root, missing_image="skip")
    assert [it.image_id for it in items] == ["P1888"]
    assert len(items[0].boxes) == 0  # vehicles only, no bridge
    with pytest.warns(UserWarning):
        everything = load_dota_folder(root, classes=None, missing_image="skip")
    assert len(everything[0].boxes) == 64


def test_nwpu_and_demo(shared_data):
    train = load_dota_folder(shared_data / "nwpu-bridges" / "train")
    assert len(train) == 30
    boxes = torch.cat([it.boxes for it in train])
    assert len(boxes) == 65
    assert (boxes[:, 2] >= boxes[:, 3]).all()
    assert ((boxes[:, 4] >= -math.pi / 2) & (boxes[:, 4] < math.pi / 2)).all()
    assert all(it.image_path.suffix == ".jpg" for it in train)
    (demo,) = load_dota_folder(shared_data / "glh-bridge-demo")
    assert demo.boxes.shape == (2, 5)
    torch.testing.assert_close(demo.boxes[:, 2], torch.tensor([458.0, 455.0]))
