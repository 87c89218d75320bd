"""What the runs of one study or search share in memory, so that no run redoes work that cannot differ from an earlier one's."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from finetune.models import classifier as model_lib
from finetune.recipe import Recipe
from finetune.utils.compat import dataset_fingerprint


@dataclass
class SharedWork:
    """The work the runs of one process share (a search's trials and its final run, a
    study's cells): the image processor, the model as loaded, a run's decoded splits, and a
    frozen backbone's features of a decoded split. Each is keyed by everything it depends
    on, so a run that differs in any of those computes its own.

    ``finetune search`` and ``finetune study`` each make one and pass it to every run
    (``training.train.train(..., shared=...)``); a single ``finetune train`` has none.
    """

    #: Keep each model as loaded, before any run trained it, and give each run a copy
    #: (loading again would give the same weights: the same seed draws the same new head).
    #: A search's trials share one seed, so one copy serves them all; a study's cells differ
    #: in seed, so keeping theirs would hold a model per seed in memory for nothing.
    keep_models: bool = True
    processors: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    prepared: dict[str, Any] = field(default_factory=dict)
    features: dict[tuple, Any] = field(default_factory=dict)
    #: How many splits' features came from an earlier run (the log says so; tests count them).
    feature_hits: int = 0

    def processor(self, recipe: Recipe):
        m = recipe.model
        key = json.dumps([m.name_or_path, m.revision, m.trust_remote_code, recipe.data.image_size])
        if key not in self.processors:
            self.processors[key] = model_lib.load_processor(m, recipe.data.image_size)
        return self.processors[key]

    def model(self, recipe: Recipe, class_names: list[str], processor, seed: int, multi_label: bool = False):
        if not self.keep_models:
            return model_lib.load_model(recipe.model, class_names, processor, multi_label=multi_label)
        settings = {k: v for k, v in dataclasses.asdict(recipe.model).items() if not k.startswith("probe_")}
        key = json.dumps([settings, class_names, seed, multi_label], sort_keys=True)
        if key not in self.models:
            self.models[key] = model_lib.load_model(recipe.model, class_names, processor, multi_label=multi_label)
        return copy.deepcopy(self.models[key])

    @staticmethod
    def data_key(recipe: Recipe, seed: int) -> str:
        """What a run's decoded splits depend on: the processor (model and image size), the
        data block and the seed; whether the run caches features decides the stored layout
        (channels-last for randomly cropped splits)."""
        m = recipe.model
        parts = [dataclasses.asdict(recipe.data), m.name_or_path, m.revision, m.trust_remote_code, m.caches_features, seed]
        return json.dumps(parts, sort_keys=True)

    @staticmethod
    def feature_scope(recipe: Recipe) -> tuple | None:
        """What a frozen backbone's features depend on besides the decoded images; None when
        they must not be shared (a randomly initialised backbone differs with every seed)."""
        m = recipe.model
        if m.from_scratch:
            return None
        precision = tuple(recipe.training.get(k) for k in ("bf16", "fp16", "tf32", "use_cpu"))
        return (m.name_or_path, m.revision, m.trust_remote_code, recipe.data.image_size, m.channels_last,
                m.feature_runtime, precision)

    def features_of(self, scope: tuple | None, dataset: Any) -> Any | None:
        """The features an earlier run computed for this decoded split under ``scope``, or None.

        The split's fingerprint, which ``datasets`` derives from the source data, every
        selection of rows and the decode pass with its processor, keys it: another k-shot
        draw or seed is another split."""
        if scope is None:
            return None
        found = self.features.get((scope, dataset_fingerprint(dataset), len(dataset)))
        self.feature_hits += found is not None
        return found

    def keep_features(self, scope: tuple | None, dataset: Any, features: Any) -> None:
        if scope is not None:
            self.features[(scope, dataset_fingerprint(dataset), len(dataset))] = features
