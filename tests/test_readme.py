"""The README's quick start and the API reference's examples run as written (with the
kernels, and with the references)."""

import importlib
import os
import re
from pathlib import Path

import pytest

import aigc_fast

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
API_DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "api.md")


def quick_start_code():
    text = Path(README).read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's quick start has no python block"
    return "\n".join(blocks)


@pytest.mark.parametrize("module", ["aigc_fast", "aigc_fast.nn", "aigc_fast.models", "aigc_fast.data",
                                    "aigc_fast.train", "aigc_fast.sampling", "aigc_fast.evaluation",
                                    "aigc_fast.reference"])
def test_the_api_reference_names_every_public_name(module):
    """docs/api.md says it covers the public API: each name a module exports is in it."""
    text = Path(API_DOC).read_text()
    exported = importlib.import_module(module).__all__
    assert [name for name in exported if not re.search(rf"\b{name}\b", text)] == []


@pytest.mark.parametrize("impl", [None, "reference"])
def test_quick_start_runs(impl):
    with aigc_fast.use_impl(impl):
        namespace = {}
        exec(compile(quick_start_code(), "README.md quick start", "exec"), namespace)
    assert namespace["loss"].grad_fn is not None and namespace["vae"].encoder.weight.grad is not None


def section_code(heading: str) -> str:
    text = Path(API_DOC).read_text()
    section = text.split("\n" + heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"docs/api.md's {heading!r} has no python block"
    return "\n".join(blocks)


@pytest.mark.parametrize("heading", ["## Conv blocks", "## Models", "## Choosing the implementation"])
def test_api_examples_run_as_written(heading):
    """The API reference's examples, self-contained (the data and training ones need MNIST
    and minutes; the CLI tests run those paths)."""
    exec(compile(section_code(heading), f"docs/api.md {heading}", "exec"), {})
    assert aigc_fast.get_impl() is None  # the example restores the default it changed
