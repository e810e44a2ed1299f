"""Sampling: one reply type and one sampler interface with its backends, pass rates, and self-repair.

from train.sampling import SamplerConfig, SamplingParams, make_sampler

sampler = make_sampler(SamplerConfig(model="outputs/tiny-model"))
replies = sampler.sample(["Compute 2+2."], SamplingParams(n=4, temperature=0.8, seed=0), mode="slow")
"""

from train.sampling.base import BACKENDS, Sampler, SamplerConfig, SamplingParams, make_sampler
from train.sampling.cli import add_sampler_arguments, sampler_config_from_args
from train.sampling.pass_rate import PassRate, pass_rates
from train.sampling.reply import Reply

__all__ = [
    "BACKENDS",
    "PassRate",
    "Reply",
    "Sampler",
    "SamplerConfig",
    "SamplingParams",
    "add_sampler_arguments",
    "make_sampler",
    "pass_rates",
    "sampler_config_from_args",
]
