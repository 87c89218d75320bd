"""What the runs of one search share in memory, so that its trials redo no work that cannot differ between them."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from finetune.models import classifier as model_lib
from finetune.recipe import Recipe


@dataclass
class Reuse:
    """What the runs of one search share in memory: a trial's decoded splits, the processor,
    the loaded model, and a cached-feature probe's train and validation features, so that
    the backbone runs once for the whole search. Keyed by everything they depend on."""

    prepared: dict[str, Any] = field(default_factory=dict)
    features: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    processors: dict[str, Any] = field(default_factory=dict)
    #: The model as loaded, before any trial trained it; each trial gets a copy. Loading again
    #: would give the same weights: the seed that draws the new head cannot be searched.
    models: dict[str, Any] = field(default_factory=dict)

    def processor(self, recipe: Recipe):
        m = recipe.model
        key = json.dumps([m.name_or_path, m.revision, m.trust_remote_code, recipe.data.image_size])
        if key not in self.processors:
            self.processors[key] = model_lib.load_processor(m, recipe.data.image_size)
        return self.processors[key]

    def model(self, recipe: Recipe, class_names: list[str], processor, seed: int):
        model = {k: v for k, v in dataclasses.asdict(recipe.model).items() if not k.startswith("probe_")}
        key = json.dumps([model, class_names, seed], sort_keys=True)
        if key not in self.models:
            self.models[key] = model_lib.load_model(recipe.model, class_names, processor)
        return copy.deepcopy(self.models[key])

    @staticmethod
    def data_key(recipe: Recipe, seed: int) -> str:
        m = recipe.model
        # The processor (model and image size), the data block, the seed; the strategy
        # decides the stored layout (channels-last for randomly cropped splits).
        parts = [dataclasses.asdict(recipe.data), m.name_or_path, m.revision, m.trust_remote_code, m.caches_features, seed]
        return json.dumps(parts, sort_keys=True)

    @staticmethod
    def features_key(recipe: Recipe, seed: int) -> str:
        # The head's solver settings do not change the features; the backbone's precision does.
        model = {k: v for k, v in dataclasses.asdict(recipe.model).items() if not k.startswith("probe_")}
        precision = {k: recipe.training.get(k) for k in ("bf16", "fp16", "tf32", "use_cpu")}
        return json.dumps([Reuse.data_key(recipe, seed), model, precision], sort_keys=True)
