"""Sampling settings in one form: SamplingParams from the `generation` config, for every path."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from planner.config.compose import compose
from planner.config.schema import LaunchSettings
from planner.errors import ShardwiseError
from runner.engine.sampling import SamplingParams
from runner.launch.render import worker_args
from runner.launch.worker import parse_args


@pytest.mark.parametrize("verb", ["chat", "serve", "launch"])
def test_the_composed_generation_defaults_are_samplingparams_defaults(verb):
    assert SamplingParams.from_generation(compose(verb).generation) == SamplingParams()


def test_generation_overrides_reach_samplingparams_and_bad_ones_name_the_override():
    generation = compose("chat", ["generation.temperature=0", "generation.stop=[END]", "generation.seed=3"]).generation
    assert SamplingParams.from_generation(generation) == SamplingParams(temperature=0.0, stop=["END"], seed=3)
    with pytest.raises(ShardwiseError, match=r"^generation.top_p=0.0 must be a number above 0"):
        SamplingParams.from_generation(compose("chat", ["generation.top_p=0"]).generation)


@pytest.mark.parametrize(
    "overrides",
    [[], ["generation.temperature=0", "generation.seed=7", "generation.max_tokens=9", "generation.stop=[END,'##']"]],
)
def test_the_torchrun_rank_reads_the_same_sampling_settings_as_the_parent(overrides):
    generation = compose("launch", overrides).generation
    argv = worker_args("plan.json", LaunchSettings(), OmegaConf.to_container(generation, resolve=True))
    assert SamplingParams.from_generation(parse_args(argv), prefix="--") == SamplingParams.from_generation(generation)
