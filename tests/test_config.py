import json

import pytest

from sciinr import Config, ConfigError, SciinrError


def test_roundtrip_json():
    cfg = Config(psnr=45.0).replace(**{"fit.width": 24, "partition.block": (4, 8, 8, 8)})
    d = json.loads(json.dumps(cfg.to_dict()))
    assert Config.from_dict(d) == cfg


@pytest.mark.parametrize(
    "change",
    [
        {"psnr": 5.0},
        {"psnr": 500.0},
        {"fit.width": 0},
        {"partition.block": (0, 8, 8, 8)},
        {"fit.device": "tpu"},
        {"cluster.blocks_per_net": 0},
    ],
)
def test_bad_values_raise_config_error(change):
    with pytest.raises(ConfigError):
        Config().replace(**change)


def test_unknown_keys():
    with pytest.raises(ConfigError, match="unknown"):
        Config.from_dict({"fit": {"widht": 3}})
    with pytest.raises(SciinrError):
        Config().replace(**{"nope.width": 3})
