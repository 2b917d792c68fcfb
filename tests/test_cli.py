"""The command line: flags map onto settings, bad input gives a clear error and exit code 2."""

from __future__ import annotations

import csv
import errno
import os

import numpy as np
import pytest
import yaml

from smcluster.api import SMCluster
from smcluster.cli import build_parser, error_message, fit_overrides, main
from smcluster.config import Config, preset


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
    assert fit(data, "--clusters 3 --neighbours 10 --method paper", tmp_path / "r") == 2
    assert "lower mining.q" in capsys.readouterr().err
    assert fit(data, "--clusters 3 --neighbours 30", tmp_path / "r2") == 2
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


def test_predict_command_on_new_images(demo_run, tmp_path, capsys) -> None:
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
    assert "warning" not in capsys.readouterr().err
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(picks)
    assert set(rows[0]) == {"id", "cluster", "confidence"}
    predicted = {int(r["id"][-8:-4]): int(r["cluster"]) for r in rows}
    agree = np.mean([predicted[i] == demo_run.labels_[i] for i in picks])
    assert agree >= 0.8


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("features.epochs=2.5", "features.epochs must be a whole number, got 2.5 (float)"),
        ("features.lr=fast", "features.lr must be a finite number, got 'fast' (str)"),
        ("features.epochs=abc", "features.epochs must be a whole number, got 'abc' (str)"),
        ("mining.warmup_epochs=-2", "mining.warmup_epochs must be >= 0, got -2"),
        ("clustering.self_label_epochs=-2", "clustering.self_label_epochs must be >= 0"),
        ("features.lr=[", "--set features.lr=[: line 1"),
    ],
)
def test_bad_settings_are_refused_before_a_run_folder_exists(
    tmp_path, capsys, setting, message
) -> None:
    out = tmp_path / "r"
    assert fit("digits", f"--clusters 10 --preset demo --set {setting}", out) == 2
    assert f"smcluster: error: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_exponents_in_set_are_numbers() -> None:
    args = build_parser().parse_args(["fit", "--set", "clustering.lr=1e-3"])
    assert fit_overrides(args)["clustering"]["lr"] == 0.001


def test_resume_with_a_bad_saved_config_is_a_message(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    saved = Config().updated(preset("demo")).to_dict()
    saved["features"]["epochs"] = 2.5
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["fit", "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: features.epochs must be a whole number, got 2.5" in err


def test_broken_yaml_config_is_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("features:\n  epochs: 3\n\tlr: 0.1\n")
    assert main(["fit", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smcluster: error: {path}: line 3, column 1: not valid YAML")
    assert err.count("\n") == 1


def test_help_states_the_settings_order(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the defaults, then --method, then --preset, then the --config file" in out
    assert "then the flags and --set" in out


def test_out_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path, capsys) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep")
    for out in (a_file, a_file / "run"):
        assert fit("digits", "--clusters 10 --preset demo", out) == 2
        err = capsys.readouterr().err
        assert f"smcluster: error: {a_file} is a file, not a folder" in err
        assert "data:" not in err
    assert a_file.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_out_parent_is_refused(tmp_path, capsys) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert fit("digits", "--clusters 10 --preset demo", parent / "run") == 2
    finally:
        parent.chmod(0o700)
    assert f"no permission to write in {parent}" in capsys.readouterr().err


def test_os_errors_are_one_line_with_file_and_advice(monkeypatch, capsys) -> None:
    def denied(run, to, copy):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), f"{to}/cluster-000")

    monkeypatch.setattr("smcluster.report.export.export_clusters", denied)
    assert main(["export", "some-run", "--to", "sorted"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"smcluster: error: sorted/cluster-000: {os.strerror(errno.EACCES)}; no permission: "
        "choose a path you can write to, or change its permissions\n"
    )


def test_error_message_names_the_destination_of_a_rename() -> None:
    error = IsADirectoryError(errno.EISDIR, "Is a directory", ".out.csv.tmp", None, "out.csv")
    assert error_message(error) == "out.csv: Is a directory; that is a folder: name a file"
    assert error_message(FileNotFoundError("no .npz file at x.npz")) == "no .npz file at x.npz"


def test_export_into_a_path_under_a_file(brief_run, tmp_path, capsys) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep")
    assert main(["export", str(brief_run.run_dir_), "--to", str(a_file / "sorted")]) == 2
    assert f"smcluster: error: {a_file} is a file, not a folder" in capsys.readouterr().err


def test_predict_warns_when_it_resizes_images(brief_run, tmp_path, capsys) -> None:
    """The run sees 16 x 16 grey digits; 24 x 24 RGB pictures are resized, with a word."""
    from PIL import Image

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    output = tmp_path / "pred.csv"
    assert main(["predict", str(brief_run.run_dir_), str(folder), "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert "smcluster: warning: resized 24 x 24 RGB images to the run's 16 x 16 grey" in err
    assert len(output.read_text().splitlines()) == 4


def test_predict_output_that_is_a_folder(brief_run, tmp_path, capsys) -> None:
    assert main(["predict", str(brief_run.run_dir_), str(tmp_path), "--output", str(tmp_path)]) == 2
    assert f"smcluster: error: {tmp_path} is a folder: name a CSV file" in capsys.readouterr().err


def test_method_flag_gives_the_method_and_explicit_flags_still_win() -> None:
    from smcluster.api import build_config

    def config_of(argv: list[str]) -> Config:
        args = build_parser().parse_args(["fit", *argv])
        return build_config(
            args.clusters,
            preset_name=args.preset,
            config=args.config,
            overrides=fit_overrides(args),
            method_name=args.method,
        )

    paper = config_of(["--method", "paper", "--preset", "demo"])
    assert (paper.features.model, paper.mining.method) == ("paper", "three-view")
    assert paper.clustering.frozen_lr == 1e-2
    default = config_of(["--preset", "demo"])
    assert default == config_of(["--method", "best", "--preset", "demo"])
    assert (default.features.model, default.mining.method) == ("simclr", "knn")
    assert default.clustering.frozen_lr == 3e-2
    scan = config_of(["--method", "scan"])
    assert (scan.features.model, scan.mining.method) == ("simclr", "knn")
    mixed = config_of(["--method", "scan", "--mining", "fused", "--set", "mining.q=5"])
    assert (mixed.features.model, mixed.mining.method, mixed.mining.q) == ("simclr", "fused", 5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--method", "nope"])
