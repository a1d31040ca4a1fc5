"""model.mixers.<rglru|mamba>.scan_impl picks how the recurrence is evaluated; an unknown name is one sentence."""

import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import build_mixer
from slm_jax.ops.scan import ScanImpl


@pytest.mark.parametrize("mixer, preset", [("rglru", "griffin"), ("mamba", "mamba")])
@pytest.mark.parametrize("impl", [i.value for i in ScanImpl])
def test_scan_impl_reaches_the_mixer(mixer, preset, impl):
    cfg = config_from_dict({"model": {"preset": preset, "n_layers": 1, "mixers": {mixer: {"scan_impl": impl}}}}).model
    assert build_mixer(cfg, mixer).scan_impl is ScanImpl(impl)


def test_unknown_scan_impl_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match="model.mixers.rglru.scan_impl must be one of reference, linear"):
        config_from_dict({"model": {"preset": "griffin", "mixers": {"rglru": {"scan_impl": "fast"}}}})
