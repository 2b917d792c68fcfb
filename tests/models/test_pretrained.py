"""Pretrained backbone sources: preprocessing equal to each library's own, weights loaded from
local files of tiny random models, the ``run:`` transfer, and clear errors. Offline throughout.

Preprocessing tolerance, per pixel in [0, 1] units: at most 1.5/255 and 0.5/255 on average (about
1.1/255 and 0.3/255 seen). Pillow resizes uint8 pixels and rounds after each of its two separable
passes (0.5/255 each); we resize floats. Bilinear weights are positive, so pure noise gives the
same bound; bicubic overshoots on sharp edges and Pillow clips after each pass in an order it
picks itself, so noise is checked on average only and smooth pictures pixel by pixel.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from smcluster.api import SMCluster
from smcluster.models import Preprocess, PretrainedBackbone, build_pretrained, load_pretrained
from smcluster.models.pretrained import (
    is_pretrained,
    parse_backbone,
    read_state_dict,
    torchvision_cache_file,
)
from smcluster.stages.features import Encoder

MAX_PIXEL_ERROR = 1.5 / 255
MEAN_PIXEL_ERROR = 0.5 / 255
SIZES = [(300, 400), (333, 250), (48, 48), (232, 311), (248, 335)]
"""Portrait, landscape, upsampled; the last two have odd crop margins (rounding of the offset)."""


def _pictures(kind: str, sizes: list[tuple[int, int]], channels: int = 3) -> list[np.ndarray]:
    """Pictures, H x W [x 3] uint8: pure "noise" or "smooth" (noise upsampled 8 times)."""
    rng = np.random.default_rng(0)
    pictures = []
    for height, width in sizes:
        shape = (height, width) if channels == 1 else (height, width, 3)
        if kind == "noise":
            pictures.append(rng.integers(0, 256, shape, dtype=np.uint8))
        else:
            small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, *shape[2:]), np.uint8)
            pictures.append(np.asarray(Image.fromarray(small).resize((width, height), 3)))
    return pictures


def _as_batch(picture: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(picture.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return tensor.unsqueeze(0)


def _check_against_library(preprocess: Preprocess, transform, channels: int = 3) -> None:
    """Our batched preprocessing against the library's transform of the same PIL pictures."""
    std = torch.tensor(preprocess.std).view(-1, 1, 1)
    for kind in ("smooth", "noise"):
        for picture in _pictures(kind, SIZES, channels):
            reference = transform(Image.fromarray(picture).convert("RGB"))
            ours = preprocess(_as_batch(picture))[0]
            assert ours.shape == reference.shape
            error = (ours - reference).abs() * std
            assert float(error.mean()) <= MEAN_PIXEL_ERROR
            if kind == "smooth" or preprocess.interpolation == "bilinear":
                assert float(error.max()) <= MAX_PIXEL_ERROR


# sources and preprocessing -------------------------------------------------------------


def test_plain_names_are_not_pretrained_sources() -> None:
    assert parse_backbone("resnet18") == ("", "resnet18")
    assert parse_backbone("timm:vit_small_patch16_224") == ("timm", "vit_small_patch16_224")
    assert parse_backbone("run:/tmp/a:b") == ("run", "/tmp/a:b")
    assert not is_pretrained("small_cnn") and is_pretrained("torchvision:resnet50")
    with pytest.raises(ValueError, match="unknown backbone source 'tv'"):
        parse_backbone("tv:resnet50")
    with pytest.raises(ValueError, match="names no model"):
        parse_backbone("timm:")
    with pytest.raises(ValueError, match="not a pretrained source"):
        load_pretrained("small_cnn")


@pytest.mark.parametrize("channels", [3, 1])
def test_preprocess_equals_torchvision_transform(channels: int) -> None:
    default = torchvision.models.ResNet50_Weights.DEFAULT
    preprocess = build_pretrained("torchvision:resnet50").preprocess
    assert (preprocess.input_size, preprocess.resize_size) == (224, 232)
    _check_against_library(preprocess, default.transforms(), channels)


def test_preprocess_takes_uint8_or_float_and_grey_becomes_three_channels() -> None:
    preprocess = Preprocess(input_size=24, resize_size=28)
    grey = _as_batch(_pictures("noise", [(30, 40)], channels=1)[0])
    out = preprocess(grey)
    assert out.shape == (1, 3, 24, 24)
    torch.testing.assert_close(out, preprocess(grey.float() / 255))
    torch.testing.assert_close(out, preprocess(grey.expand(-1, 3, -1, -1)))
    torch.testing.assert_close(out[:, 0] * 0.229 + 0.485, out[:, 1] * 0.224 + 0.456)


def test_preprocess_rejects_unsupported_settings() -> None:
    with pytest.raises(ValueError, match="crop mode 'border'"):
        Preprocess(224, 256, crop="border")
    with pytest.raises(ValueError, match="interpolation 'lanczos'"):
        Preprocess(224, 256, interpolation="lanczos")
    with pytest.raises(ValueError, match="at most resize_size"):
        Preprocess(224, 200)
    with pytest.raises(ValueError, match="mean and std need 1 values"):
        Preprocess(32, 32, channels=1)


# torchvision ---------------------------------------------------------------------------


def _images(n: int = 3, height: int = 40, width: int = 52) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8)


@torch.no_grad()
def _assert_same_features(loaded: PretrainedBackbone, original: nn.Module) -> None:
    loaded.eval()
    original.eval()
    images = _images()
    expected = original(loaded.preprocess(images))
    torch.testing.assert_close(loaded(images.float() / 255), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module"])
def test_torchvision_weights_file_gives_the_model_features(tmp_path, wrap: str) -> None:
    original = torchvision.models.resnet18()
    state = original.state_dict()
    saved = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "module": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(saved, tmp_path / "resnet18.pt")
    loaded = load_pretrained("torchvision:resnet18", weights=tmp_path / "resnet18.pt")
    original.fc = nn.Identity()
    assert loaded.out_dim == 512
    _assert_same_features(loaded, original)


def test_torchvision_uses_its_cache_offline_and_says_how_to_fill_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = torchvision_cache_file(torchvision.models.ResNet18_Weights.DEFAULT)
    assert cached.parent == tmp_path / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError, match=f"{cached} is not there; pass --download"):
        load_pretrained("torchvision:resnet18")
    original = torchvision.models.resnet18()
    cached.parent.mkdir(parents=True)
    torch.save(original.state_dict(), cached)
    loaded = load_pretrained("torchvision:resnet18")
    original.fc = nn.Identity()
    _assert_same_features(loaded, original)


def test_torchvision_classifiers_are_removed() -> None:
    vit = build_pretrained("torchvision:vit_b_16")
    assert isinstance(vit.network.heads.head, nn.Identity) and vit.out_dim == 768
    mobile = build_pretrained("torchvision:mobilenet_v3_small")
    assert isinstance(mobile.network.classifier[3], nn.Identity) and mobile.out_dim == 1024


def test_weights_that_do_not_fit_name_the_keys(tmp_path) -> None:
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pt")
    with pytest.raises(ValueError, match=r"resnet34.pt for torchvision:resnet18 do not fit.*"):
        load_pretrained("torchvision:resnet18", weights=tmp_path / "resnet34.pt")
    grey = torchvision.models.resnet18()
    grey.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(grey.state_dict(), tmp_path / "grey.pt")
    with pytest.raises(ValueError, match=r"conv1.weight \(file \[64, 1, 7, 7\], model \[64, 3"):
        load_pretrained("torchvision:resnet18", weights=tmp_path / "grey.pt")


def test_bad_weights_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file .*missing.pt does not exist"):
        load_pretrained("torchvision:resnet18", weights=tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="cannot read weights file .*corrupt.pt"):
        load_pretrained("torchvision:resnet18", weights=tmp_path / "corrupt.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        read_state_dict(tmp_path / "list.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled-module.pt")
    with pytest.raises(ValueError, match="cannot read weights file .*pickled-module.pt"):
        read_state_dict(tmp_path / "pickled-module.pt")


def test_unknown_torchvision_model_lists_close_names() -> None:
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet5'; close names"):
        build_pretrained("torchvision:resnet5")


def test_pretrained_backbone_trains_under_an_encoder() -> None:
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    backbone = PretrainedBackbone(net, Preprocess(32, 36), "torchvision:resnet18")
    encoder = Encoder(backbone, hidden_dim=16, out_dim=8)
    loss = encoder(torch.rand(4, 1, 28, 28)).pow(2).sum()
    loss.backward()
    assert net.conv1.weight.grad is not None and float(net.conv1.weight.grad.abs().sum()) > 0


# timm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet10t", "vit_tiny_patch16_224"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_timm_weights_file_gives_the_model_features(tmp_path, name: str, suffix: str) -> None:
    timm = pytest.importorskip("timm")
    original = timm.create_model(name, num_classes=1000)
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        pytest.importorskip("safetensors").torch.save_file(original.state_dict(), str(path))
    else:
        torch.save(original.state_dict(), path)
    loaded = load_pretrained(f"timm:{name}", weights=path)
    original.reset_classifier(0)
    assert loaded.out_dim == original.num_features
    _assert_same_features(loaded, original)


def test_preprocess_equals_timm_transform() -> None:
    timm = pytest.importorskip("timm")
    loaded = build_pretrained("timm:vit_tiny_patch16_224")
    config = timm.data.resolve_data_config({}, model=loaded.network)
    assert loaded.preprocess.interpolation == "bicubic"
    assert loaded.preprocess.resize_size == math.floor(224 / config["crop_pct"])
    _check_against_library(loaded.preprocess, timm.data.create_transform(**config))
    squash = Preprocess(
        224, 248, crop="squash", interpolation="bicubic", mean=config["mean"], std=config["std"]
    )
    _check_against_library(squash, timm.data.create_transform(**{**config, "crop_mode": "squash"}))


def test_timm_without_weights_or_cache_says_what_to_do(tmp_path, monkeypatch) -> None:
    pytest.importorskip("timm")
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*--download"):
        load_pretrained("timm:resnet10t")
    with pytest.raises(ValueError, match="unknown timm model 'resnet10x'; close names"):
        load_pretrained("timm:resnet10x")


@pytest.mark.parametrize(("module", "source"), [("timm", "timm:x"), ("open_clip", "open_clip:x")])
def test_missing_extra_says_how_to_install_it(monkeypatch, module: str, source: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ValueError, match=rf"{module} is not installed: pip install smcluster\["):
        build_pretrained(source)


# open_clip -----------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_clip(tmp_path_factory):
    """A tiny CLIP architecture registered with open_clip under a test-only name."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open_clip")
    (folder / "smcluster-test-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    return open_clip, "smcluster-test-tiny"


@pytest.mark.parametrize("tower_only", [False, True])
def test_open_clip_weights_file_gives_the_image_tower_features(
    tiny_clip, tmp_path, tower_only: bool
) -> None:
    open_clip, name = tiny_clip
    original = open_clip.create_model(name)
    state = original.visual.state_dict() if tower_only else original.state_dict()
    torch.save(state, tmp_path / "clip.pt")
    loaded = load_pretrained(f"open_clip:{name}", weights=tmp_path / "clip.pt")
    assert loaded.out_dim == TINY_CLIP["embed_dim"]
    _assert_same_features(loaded, original.visual)


def test_preprocess_equals_open_clip_transform(tiny_clip) -> None:
    open_clip, name = tiny_clip
    _, _, transform = open_clip.create_model_and_transforms(name)
    preprocess = build_pretrained(f"open_clip:{name}").preprocess
    assert (preprocess.input_size, preprocess.interpolation) == (32, "bicubic")
    _check_against_library(preprocess, transform)
    _check_against_library(preprocess, transform, channels=1)


def test_open_clip_errors_are_clear(tiny_clip, tmp_path) -> None:
    _, name = tiny_clip
    with pytest.raises(FileNotFoundError, match="--download with a tag"):
        load_pretrained(f"open_clip:{name}")
    with pytest.raises(ValueError, match="no tag 'laion'"):
        load_pretrained(f"open_clip:{name}@laion", download=True)
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-B-33'; close names"):
        load_pretrained("open_clip:ViT-B-33")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(ValueError, match="image tower\\) do not fit: keys .* missing"):
        load_pretrained(f"open_clip:{name}", weights=tmp_path / "resnet.pt")


# run: ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[SMCluster, np.ndarray]:
    """A finished run with one epoch per stage on 256 random grey 16 x 16 images."""
    images = np.random.default_rng(0).integers(0, 256, (256, 16, 16), dtype=np.uint8)
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    settings = {"features__epochs": 1, "clustering__epochs": 1, "mining__warmup_epochs": 1}
    model = SMCluster(
        10, preset="demo", out=out, run__report=False, run__progress=False, **settings
    )
    return model.fit(images), images


@pytest.mark.slow
def test_run_backbone_gives_the_runs_embeddings(tiny_run) -> None:
    run, images = tiny_run
    backbone = load_pretrained(f"run:{run.run_dir_}").eval()
    assert backbone.preprocess.input_size == 16 and backbone.preprocess.channels == 1
    with torch.no_grad():
        features = backbone(torch.from_numpy(images).unsqueeze(1).float() / 255)
    expected = np.load(run.run_dir_ / "embeddings.npy")
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_run_backbone_takes_another_collection(tiny_run) -> None:
    run, images = tiny_run
    backbone = load_pretrained(f"run:{run.run_dir_}").eval()
    larger_rgb = torch.from_numpy(images[:8]).repeat_interleave(3, 1).repeat_interleave(3, 2)
    larger_rgb = larger_rgb.unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        features = backbone(larger_rgb.float() / 255)
        native = backbone(torch.from_numpy(images[:8]).unsqueeze(1).float() / 255)
    assert features.shape == (8, backbone.out_dim)
    similarity = torch.nn.functional.cosine_similarity(features, native)
    assert float(similarity.min()) > 0.9


def test_run_source_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        load_pretrained(f"run:{tmp_path}")
    (tmp_path / "config.yaml").write_text("n_clusters: 10\n")
    with pytest.raises(FileNotFoundError, match="has no stage-1 checkpoint"):
        load_pretrained(f"run:{tmp_path}")
    with pytest.raises(ValueError, match="takes its weights from the run"):
        load_pretrained(f"run:{tmp_path}", weights=tmp_path / "config.yaml")
