"""``hbdnet serve`` argument and setup errors stop before the server listens."""

from __future__ import annotations

import pytest

from serving.cli.arguments import size_in_bytes as _size
from serving.cli.main import main


def test_bad_model_is_an_error_before_listening(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope.pth"), "--data-dir", str(tmp_path / "d")]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # nothing made for a server that never starts
    not_a_model = tmp_path / "x.pth"
    not_a_model.write_bytes(b"garbage")
    assert main(["serve", "--model", str(not_a_model), "--data-dir", str(tmp_path / "d")]) == 2


@pytest.mark.parametrize("text,value", [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("100k", 102400), ("1000", 1000),
                                        ("1.5GiB", int(1.5 * 2**30))])
def test_sizes(text, value):
    assert _size(text) == value


@pytest.mark.parametrize("args", [["--max-upload", "lots"], ["--max-queue", "0"], ["--workers", "-1"],
                                  ["--job-timeout", "-5"], ["--keep-results", "soon"], ["--keep-results", "0h"],
                                  ["--max-data", "lots"]])
def test_bad_options_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", *args])
    assert exc.value.code == 2


@pytest.mark.parametrize("option, words", [(["--keys-file", "KEYS"], ["line 1", "too short"]),
                                           (["--keys-file", "MISSING"], ["cannot read the keys file"]),
                                           (["--cors-origin", "maps.example.org"], ["CORS origin"]),
                                           (["--basemap", "https://tiles.example.org/a.png"], ["--basemap", "{z}"])])
def test_bad_keys_file_origin_or_basemap_is_an_error_before_listening(tmp_path, capsys, option, words):
    keys = tmp_path / "keys.txt"
    keys.write_text("alice tooshortkey\n")
    option = [str(keys) if o == "KEYS" else str(tmp_path / "missing.txt") if o == "MISSING" else o for o in option]
    assert main(["serve", *option, "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "tooshortkey" not in err
    assert not (tmp_path / "d").exists()


def test_a_store_that_cannot_be_reached_is_one_line(tmp_path, capsys, tiny_checkpoint):
    code = main(["serve", "--model", str(tiny_checkpoint), "--data-dir", str(tmp_path / "d"), "--store",
                 "postgresql://hbdnet:secret@127.0.0.1:9/jobs"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot use the job store postgresql://hbdnet:***@127.0.0.1:9/jobs" in err[0], err
    assert "secret" not in err[0]
