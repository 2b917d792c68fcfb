"""The Python API: ``SMCluster``, an estimator in scikit-learn's habits.

    >>> from smcluster import SMCluster
    >>> model = SMCluster(n_clusters=10, preset="demo").fit("digits")
    >>> model.labels_[:5], model.metrics_["acc"]

Settings are given as a method, a preset, a ``Config`` or YAML file and/or keyword overrides
in scikit-learn's nested-parameter style (``features__epochs=50``), applied in that order
(``build_config``); everything is validated before work starts.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smcluster.autoconfig import (
    AUTO,
    AutoChoice,
    Machine,
    choose,
    data_shape,
    dotted,
    without,
)
from smcluster.budget import settle_explicit_epochs
from smcluster.config import (
    DEFAULT_METHOD,
    Config,
    load_settings,
    merge,
    method,
    most_clusters,
    nested_settings,
    preset,
)
from smcluster.data import ImageSet, load_dataset
from smcluster.data.embeddings import Embeddings, check_ids, check_vectors
from smcluster.data.imageset import check_labels
from smcluster.inference import FittedModel, load_fitted, warn_if_converted
from smcluster.pipeline import run_pipeline
from smcluster.runfolder import IN_MEMORY, RunFolder


def build_config(
    n_clusters: int | str | None = None,
    *,
    preset_name: str | None = None,
    config: Config | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    method_name: str | None = None,
) -> Config:
    """The validated configuration; later sources win: defaults < method < preset < config
    file < overrides < n_clusters.

    A method (``config.METHODS``: ``paper``, ``scan``, ``best``) names a whole method's
    settings (feature model, mining, head selection, entropy weight); a preset sizes a run
    (backbone, image size, epochs), so it comes after and an explicit setting beats both.

    A YAML file overrides only the settings it names, so ``--config tuned.yaml --preset demo``
    is the demo preset with the file's changes. A ``Config`` object holds every setting, so it
    replaces the defaults and cannot be combined with a named preset (``auto`` is ignored).
    ``preset_name="auto"`` reads the data's shape from the source the settings name
    (``build_settings`` also takes data in memory and returns what auto chose).
    """
    return build_settings(
        n_clusters,
        preset_name=preset_name,
        config=config,
        overrides=overrides,
        method_name=method_name,
    )[0]


def build_settings(
    n_clusters: int | None = None,
    *,
    preset_name: str | None = None,
    config: Config | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    data: Any = None,
    machine: Machine | None = None,
    method_name: str | None = None,
) -> tuple[Config, AutoChoice | None]:
    """``build_config`` with the ``auto`` preset's choice (None for other presets).

    ``auto`` is the preset layer: it is chosen (``autoconfig.choose``) from ``machine``
    (detected when None), the shape of ``data`` (or of the source the settings name) and the
    cluster count, and every setting the config file or the overrides name is left out of it.
    """
    if isinstance(config, Config):
        if preset_name not in (None, AUTO):
            raise ValueError(
                f"a Config object holds every setting, so preset {preset_name!r} would change "
                f"nothing: pass config=Config().updated(preset({preset_name!r})) instead"
            )
        if method_name is not None:
            raise ValueError(
                f"a Config object holds every setting, so method {method_name!r} would change "
                f"nothing: pass config=Config().updated(method({method_name!r})) instead"
            )
        base = config.updated(overrides or {})
        if n_clusters is not None:
            base = base.updated({"n_clusters": n_clusters})
        return base.validate(), None
    explicit = load_settings(config) if config is not None else {}
    explicit = merge(explicit, overrides or {})
    if n_clusters is not None:
        explicit = merge(explicit, {"n_clusters": n_clusters})
    choice = None
    if preset_name == AUTO:
        given = Config().updated(explicit).validate()
        machine = machine or Machine.detect(given.run.accelerator)
        shape = data_shape(given, data)
        chosen = choose(machine, shape, most_clusters(given.n_clusters, shape.n or None))
        kept = without(chosen.overrides, explicit)
        yours = sorted(set(dotted(chosen.overrides)) - set(dotted(kept)))
        mine = [f"auto: your settings win over it: {', '.join(yours)}"] if yours else []
        choice = AutoChoice(kept, (*chosen.reasons, *mine))
        layer = choice.overrides
    else:
        layer = preset(preset_name) if preset_name is not None else {}
    base = Config().updated(method(method_name or DEFAULT_METHOD))
    config = base.updated(layer).updated(explicit).validate()
    return settle_explicit_epochs(config, [explicit]), choice


def as_imageset(X: Any, y: Any = None, config: Config | None = None) -> ImageSet:
    """Accept an ImageSet, a source string (path or name) or a uint8 array of images."""
    config = config or Config()
    d = config.data
    if isinstance(X, ImageSet):
        return X
    if isinstance(X, (str, Path)):
        return load_dataset(
            str(X), image_size=d.image_size, channels=d.channels, root=d.root, download=d.download
        )
    from smcluster.data import from_arrays

    images = X.numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    labels = None if y is None else np.asarray(y)
    return from_arrays(images, labels, image_size=d.image_size, channels=d.channels)


def as_embeddings(X: Any, y: Any = None) -> Embeddings | None:
    """``X`` as precomputed features when it is ``Embeddings`` or a 2-D float array (images
    are integer arrays of 3 or 4 dimensions), else None."""
    if isinstance(X, Embeddings):
        return X
    if isinstance(X, (str, Path, ImageSet)):
        return None
    array = X.numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    if array.ndim != 2 or array.dtype.kind != "f":
        return None
    vectors = check_vectors(array, "X")
    labels = None if y is None else check_labels(np.asarray(y), len(vectors), "y")
    return Embeddings(vectors, check_ids(None, len(vectors), "X"), labels, "embeddings")


class SMCluster:
    """Deep clustering of images into many groups (METHOD.md: stages 1-3).

    Parameters
    ----------
    n_clusters: number of clusters C, or ``"auto"`` / ``"LO:HI"`` to choose it without labels
        in that range (``config.cluster_range``; ``"auto"`` is 2 to min(N / 5, 2000)).
    method: a named method (``smcluster.config.METHODS``): ``"best"`` (used when None: the
        best measured, benchmarks/README.md), ``"paper"`` (METHOD.md exactly) or ``"scan"``
        (SimCLR + kNN); under the preset, config and overrides.
    preset: ``"auto"`` (the default: settings chosen from the machine, the data's shape and
        n_clusters, ``smcluster.autoconfig``; any other setting given wins over it), a named
        preset (``smcluster.config.PRESETS``), e.g. ``"demo"`` or ``"cpu-mnist"``, or None
        (no preset: the method's settings on the METHOD.md defaults).
    config: the path of a YAML file (its settings override the preset's), or a ``Config``
        (every setting; not together with ``preset``).
    out: the run folder; a fresh temporary folder when omitted.
    **settings: overrides, nested with ``__``: ``features__epochs=50``, ``mining__q=10``.

    After ``fit``: ``labels_`` (N,), ``probabilities_`` (N x C), ``metrics_`` (dict; accuracy
    metrics only when labels were known, and then used for nothing else), ``run_dir_``,
    ``n_clusters_`` (C, the chosen number when ``n_clusters`` gave a range).
    """

    def __init__(
        self,
        n_clusters: int | str = 10,
        *,
        preset: str | None = AUTO,
        config: Config | str | Path | None = None,
        out: str | Path | None = None,
        method: str | None = None,
        **settings: Any,
    ) -> None:
        self.n_clusters = n_clusters
        self.method = method
        self.preset = preset
        self.config = config
        self.out = out
        self.settings = settings

    def get_config(self, X: Any = None) -> Config:
        """The settings ``fit(X)`` runs with (``auto`` sized for ``X`` when given)."""
        return self._settings(X)[0]

    def _settings(self, X: Any, *, resume: bool = False) -> tuple[Config, AutoChoice | None]:
        return build_settings(
            self.n_clusters,
            preset_name=None if resume and self.preset == AUTO else self.preset,
            config=self.config,
            overrides=nested_settings(self.settings),
            method_name=self.method,
            data=X,
        )

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        resume: bool = False,
        features_from: str | Path | None = None,
    ) -> SMCluster:
        """Cluster ``X``: an ImageSet, a source string, a uint8 array of images N x H x W [x C],
        or precomputed features (a float array N x D, or ``Embeddings``), which replace stage 1.

        ``y`` (optional true labels) is used only to report metrics, never in training.
        ``resume`` continues an interrupted run in ``out``; ``features_from`` reuses the
        stage 1 of an earlier run with the same settings.
        """
        data, embeddings = None, as_embeddings(X, y)
        config, choice = self._settings(X if embeddings is None else embeddings, resume=resume)
        if embeddings is not None:
            config = config.updated({"data": {"source": None, "embeddings": IN_MEMORY}})
        else:
            data = as_imageset(X, y, config)
            if not isinstance(X, (str, Path)):
                config = config.updated({"data": {"source": IN_MEMORY}})
        out = (
            Path(self.out)
            if self.out is not None
            else Path(tempfile.mkdtemp(prefix=f"smcluster-{datetime.now():%Y%m%d-%H%M%S}-"))
        )
        if self.out is None:
            out = out / "run"
        result = run_pipeline(
            config,
            out,
            resume=resume,
            data=data,
            embeddings=embeddings,
            features_from=features_from,
            auto=choice,
        )
        self.labels_ = result.labels
        self.n_clusters_ = result.config.n_clusters
        self.probabilities_ = result.probabilities
        self.metrics_ = result.metrics
        self.run_dir_ = result.folder.root
        self._fitted: FittedModel | None = None
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X, y).labels_

    def _model(self) -> FittedModel:
        if not hasattr(self, "run_dir_"):
            raise ValueError("this SMCluster is not fitted yet: call fit first")
        if self._fitted is None:
            self._fitted = load_fitted(self.run_dir_)
        return self._fitted

    def _new_data(self, X: Any) -> ImageSet:
        model = self._model()
        if isinstance(X, np.ndarray) and X.ndim in (3, 4):
            shape = (X.shape[2], X.shape[1], 1 if X.ndim == 3 else X.shape[3])
            warn_if_converted({shape}, model.image_size, model.channels)
        cfg = model.config.updated(
            {"data": {"image_size": model.image_size, "channels": model.channels}}
        )
        return as_imageset(X, None, cfg)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Soft cluster assignments (N x C) of new images with the kept head."""
        return self._model().predict_proba(self._new_data(X))

    def predict(self, X: Any) -> np.ndarray:
        """The cluster of each new image: argmax of the kept head (METHOD.md, Stage 3)."""
        return self.predict_proba(X).argmax(axis=1)

    def transform(self, X: Any) -> np.ndarray:
        """Backbone features (N x E) of new images under the clustering model's backbone."""
        from smcluster.engine import map_batches

        model = self._model()
        model.backbone.eval()
        device = next(model.backbone.parameters()).device
        data = self._new_data(X)
        with torch.no_grad():
            out = map_batches(
                lambda b: model.backbone(b.float() / 255.0), data, batch_size=256, device=device
            )
        return out.numpy()

    @classmethod
    def from_run(cls, run_dir: str | Path) -> SMCluster:
        """An SMCluster fitted by an earlier run (e.g. one made with the command line)."""
        fitted = load_fitted(run_dir)
        model = cls(fitted.config.n_clusters, config=fitted.config, out=run_dir)
        model.run_dir_ = Path(run_dir)
        model._fitted = fitted
        folder = RunFolder(run_dir)
        model.probabilities_ = folder.load_array("probabilities")
        model.labels_ = model.probabilities_.argmax(axis=1)
        model.n_clusters_ = fitted.config.n_clusters
        model.metrics_ = folder.load_json("metrics")
        return model
