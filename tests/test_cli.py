"""The command line: flags map onto settings, bad input gives a clear error and exit code 2."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from smcluster.api import SMCluster
from smcluster.cli import build_parser, fit_overrides, main


def test_fit_flags_become_nested_overrides() -> None:
    args = build_parser().parse_args(
        [
            "fit",
            "--data",
            "x.npz",
            "--clusters",
            "5",
            "--feature-model",
            "simclr",
            "--mining",
            "knn",
            "--self-label",
            "--epochs",
            "7",
            "--devices",
            "2",
            "--set",
            "clustering.entropy_weight=3.5",
            "--set",
            "augment.flip=false",
            "--quiet",
        ]
    )
    overrides = fit_overrides(args)
    assert overrides["data"] == {"source": "x.npz"}
    assert overrides["features"] == {"model": "simclr", "epochs": 7}
    assert overrides["mining"] == {"method": "knn"}
    assert overrides["clustering"] == {"self_label": True, "entropy_weight": 3.5}
    assert overrides["augment"] == {"flip": False}
    assert overrides["run"] == {"devices": 2, "progress": False}


def test_presets_command_lists_every_preset(capsys) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "# demo" in out and "# paper-imagenet" in out


def random_npz(path, n: int) -> str:
    images = np.random.default_rng(0).integers(0, 255, (n, 8, 8), dtype=np.uint8)
    np.savez(path, images=images)
    return str(path)


def fit(data: str, flags: str, out) -> int:
    """`smcluster fit` in this process; returns its exit code."""
    return main(
        ["fit", "--data", data, *flags.split(), "--out", str(out), "--quiet", "--no-report"]
    )


def test_wrong_npz_field_is_a_clear_error(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, pictures=np.zeros((20, 8, 8), dtype=np.uint8))
    assert fit(str(bad), "--clusters 2", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "images" in err and "pictures" in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_fewer_images_than_clusters(tmp_path, capsys) -> None:
    assert fit(random_npz(tmp_path / "few.npz", 5), "--clusters 10", tmp_path / "r") == 2
    assert "5 images cannot form 10 clusters" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_too_few_images_for_the_neighbours(tmp_path, capsys) -> None:
    data = random_npz(tmp_path / "few.npz", 30)
    assert fit(data, "--clusters 3 --neighbours 10", tmp_path / "r") == 2
    assert "lower mining.q" in capsys.readouterr().err


def test_empty_image_set_is_refused() -> None:
    with pytest.raises(ValueError, match="(?i)empty|no images"):
        SMCluster(2).fit(np.zeros((0, 8, 8), dtype=np.uint8))


def test_bad_set_syntax(capsys) -> None:
    assert main(["fit", "--set", "novalue", "--out", "unused"]) == 2
    assert "SECTION.KEY=VALUE" in capsys.readouterr().err


def test_resume_needs_a_run(tmp_path, capsys) -> None:
    assert main(["fit", "--resume", "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_predict_command_on_new_images(demo_run, tmp_path) -> None:
    """Digits shifted by one pixel, saved as files (new images, never trained on), get the
    clusters that fit gave the originals."""
    from PIL import Image

    from smcluster.data import load_dataset

    data = load_dataset("digits", image_size=16)
    folder = tmp_path / "new"
    folder.mkdir()
    picks = list(range(0, 1797, 25))
    for i in picks:
        shifted = np.roll(data[i][0][0].numpy(), 1, axis=1)
        Image.fromarray(shifted).save(folder / f"img{i:04d}.png")
    output = tmp_path / "pred.csv"
    assert main(["predict", str(demo_run.run_dir_), str(folder), "--output", str(output)]) == 0
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(picks)
    assert set(rows[0]) == {"id", "cluster", "confidence"}
    predicted = {int(r["id"][-8:-4]): int(r["cluster"]) for r in rows}
    agree = np.mean([predicted[i] == demo_run.labels_[i] for i in picks])
    assert agree >= 0.8
