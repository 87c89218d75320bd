"""The accelerate configs shipped in recipes/accelerate/ load as accelerate reads them."""

from __future__ import annotations

from tests.helpers import ROOT

CONFIGS = ROOT / "recipes" / "accelerate"


def test_shipped_accelerate_configs_load() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"cpu_2proc.yaml", "single_gpu.yaml", "multi_gpu.yaml", "fsdp.yaml", "multi_node.yaml"} <= names
    for path in CONFIGS.glob("*.yaml"):
        config = ClusterConfig.from_yaml_file(str(path))
        assert config.num_processes >= 1, path
    fsdp = ClusterConfig.from_yaml_file(str(CONFIGS / "fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert ClusterConfig.from_yaml_file(str(CONFIGS / "multi_node.yaml")).num_machines > 1
