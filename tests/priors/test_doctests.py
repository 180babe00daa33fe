"""The worked examples in the priors' docstrings run and print what they say."""
import doctest
import importlib

import pytest

MODULES = ["priors.sds", "priors.memory", "priors.hybrid", "priors.prior_3d", "priors.tiny", "priors.registry",
           "priors.weights", "priors.deferred", "priors.clip", "priors.latents"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
