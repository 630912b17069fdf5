"""Loading the compiled part: a missing, stale or mismatched binary never breaks
`import aigc_fast`; it warns once and every op runs its reference. Plus info() and the CLI."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import aigc_fast

from conftest import FusedOpCounter, requires_fused

PACKAGE_DIR = os.path.dirname(aigc_fast.__file__)

PROBE = """
import warnings, torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import aigc_fast
    z = aigc_fast.reparameterize(torch.zeros(3), torch.zeros(3), eps=torch.ones(3))
print("WARNINGS", len([w for w in caught if "aigc_fast" in str(w.message)]))
print("MESSAGE", next((str(w.message) for w in caught if "aigc_fast" in str(w.message)), ""))
print("LOADED", aigc_fast._extension.LOADED)
print("Z", z.tolist())
print("INFO", aigc_fast.info(print_report=False)["extension"])
try:
    aigc_fast.reparameterize(torch.zeros(3), torch.zeros(3), impl="fused")
except RuntimeError as e:
    print("FUSED_ERROR", e)
"""


def run_probe(package_parent, env_extra=None):
    env = dict(os.environ, PYTHONPATH=package_parent, **(env_extra or {}))
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=package_parent)
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the installed package (binary included) that a test may damage."""
    shutil.copytree(PACKAGE_DIR, tmp_path / "aigc_fast", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _damage_build_info(root, **changes):
    path = root / "aigc_fast" / "_build_info.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    info.update(changes)
    path.write_text(json.dumps(info))


@pytest.mark.skipif(not aigc_fast._extension.LOADED, reason="needs a built extension to damage")
@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda root: _damage_build_info(root, torch="1.0.0"), "built against torch 1.0.0"),
        (lambda root: _damage_build_info(root, package_version="0.0.1"), "is stale"),
        (lambda root: (root / "aigc_fast" / "_build_info.json").write_text("{not json"), "failed to load"),
        (lambda root: (root / "aigc_fast" / "_build_info.json").write_text("[1, 2]"),
         "holds a JSON list, not the object setup.py writes"),
        (lambda root: (root / "aigc_fast" / "_build_info.json").write_text("{}"),
         "does not name the torch the kernels were built against"),
        (lambda root: [p.unlink() for p in (root / "aigc_fast").glob("_C*.so")], "aigc_fast._C) are not"),
        # Same size, not a library: the loader refuses it with an error.
        (lambda root: [p.write_bytes(b"\0" * p.stat().st_size) for p in (root / "aigc_fast").glob("_C*.so")],
         "failed to load"),
        # Truncated (a full disk, an interrupted copy): the loader itself can crash with a bus
        # error on such a file, so its ELF headers are checked against its size first.
        (lambda root: [os.truncate(p, 1000) for p in (root / "aigc_fast").glob("_C*.so")], "is truncated or corrupt: 1000 bytes"),
        (lambda root: [os.truncate(p, p.stat().st_size // 2) for p in (root / "aigc_fast").glob("_C*.so")],
         "is truncated"),
    ],
)
def test_broken_extension_warns_once_and_runs_reference(package_copy, damage, reason):
    damage(package_copy)
    result = run_probe(str(package_copy))
    assert result["WARNINGS"] == "1"
    assert reason in result["MESSAGE"] and "pip install --no-build-isolation" in result["MESSAGE"]
    assert result["LOADED"] == "False"
    assert result["Z"] == "[1.0, 1.0, 1.0]"
    assert result["INFO"].startswith("not loaded: ")  # aigc_fast.info() still reports, whatever the damage
    assert "impl='fused' was requested" in result["FUSED_ERROR"]


@pytest.mark.parametrize("installed, editable", [(False, False), (True, False), (True, True)])
def test_the_fix_offered_fits_how_the_package_is_installed(monkeypatch, installed, editable):
    """From a source folder with no binary: "run from another folder" only if an installed
    copy exists to be found there (not an editable install: that is this folder), else the
    install line; a rebuild keeps an editable install editable (a plain reinstall would
    replace it with a copy)."""
    ext = aigc_fast._extension
    monkeypatch.setattr(ext, "_installed", lambda: (installed, editable))
    monkeypatch.setattr(ext, "_in_source_folder", lambda: True)
    monkeypatch.setattr(ext.importlib.util, "find_spec", lambda name: None)
    reason = ext._why_not_loadable({})
    assert ("imported ahead of the installed package" in reason) == (installed and not editable)
    assert ("aigc_fast is not installed" in reason) == (not installed)
    assert ("editable install" in reason) == editable
    assert ("--no-deps -e ." in ext._rebuild_hint()) == editable


@pytest.mark.skipif(not aigc_fast._extension.LOADED or shutil.which("strip") is None,
                    reason="needs a built extension and binutils' strip")
def test_a_stripped_binary_still_loads(package_copy):
    """Stripping (or patchelf, auditwheel) rewrites the library consistently: the truncation
    check reads the file's own headers, so such a binary is not mistaken for a damaged one."""
    for p in (package_copy / "aigc_fast").glob("_C*.so"):
        size = p.stat().st_size
        subprocess.run(["strip", "--strip-debug", str(p)], check=True)
        assert p.stat().st_size < size
    result = run_probe(str(package_copy))
    assert result["WARNINGS"] == "0" and result["LOADED"] == "True"


def test_disabling_the_extension_is_silent(package_copy):
    result = run_probe(str(package_copy), {"AIGC_FAST_NO_EXTENSION": "1"})
    assert result["WARNINGS"] == "0" and result["LOADED"] == "False"
    assert result["Z"] == "[1.0, 1.0, 1.0]"


def test_info_reports_versions_backends_and_choices(capsys):
    facts = aigc_fast.info()
    printed = capsys.readouterr().out
    assert facts["torch"] == torch.__version__ and facts["aigc_fast"] == aigc_fast.__version__
    assert "reparameterize [cpu]" in printed and "compiled_backends" in printed
    expected = "fused" if aigc_fast._extension.LOADED else "reference"
    assert facts["ops"]["reparameterize"]["cpu"].startswith(expected)
    with aigc_fast.use_impl("reference"):
        assert aigc_fast.info(print_report=False)["ops"]["reparameterize"]["cpu"].startswith("reference")
    if aigc_fast._extension.LOADED:  # what the binary says of itself (CI requires "openmp")
        assert facts["cpu_kernel_threading"] in ("openmp", "torch's own pool", "none (built without OpenMP: one thread)")
        assert facts["cpu_kernels"] and facts["cpu_philox_lanes"] in ("avx512", "avx2", "portable")


def test_info_says_a_forced_fused_choice_cannot_run(monkeypatch):
    """set_impl("fused") where the kernels cannot run makes every call raise: info() says so
    rather than reporting the reference it will not run."""
    monkeypatch.setattr(aigc_fast._impl, "fused_unavailable_reason", lambda device: "no kernels here")
    with aigc_fast.use_impl("fused"):
        assert aigc_fast.info(print_report=False)["ops"]["reparameterize"]["cpu"] == (
            "error: fused is forced (aigc_fast.set_impl / use_impl) but no kernels here")


def test_every_subpackage_the_readme_names_is_reachable_from_the_package(tmp_path):
    """`import aigc_fast` then `aigc_fast.evaluation...` as the README writes it, in a fresh
    interpreter (here every subpackage is imported already by other tests)."""
    names = ("data", "evaluation", "models", "nn", "reference", "sampling", "train")
    code = f"import aigc_fast; print(all(hasattr(aigc_fast, n) for n in {names!r}))"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(PACKAGE_DIR))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_cli_info(tmp_path):
    """The installed console script, run from a neutral folder as a user would."""
    script = shutil.which("aigc-fast", path=os.path.dirname(sys.executable))
    assert script is not None, "the aigc-fast console script is not installed"
    out = subprocess.run([script, "info", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["torch"] == torch.__version__
    assert facts["extension"] == aigc_fast.info(print_report=False)["extension"]
    assert "cpu" in facts["ops"]["reparameterize"]


@pytest.mark.skipif(not aigc_fast._extension.LOADED, reason="needs the compiled ops")
@pytest.mark.parametrize("call, name", [
    (lambda m: torch.ops.aigc_fast.bias_act(torch.zeros(2, 3), torch.zeros(3, device=m), 1, "relu", 0.2), "bias"),
    (lambda m: torch.ops.aigc_fast.reparameterize(torch.zeros(3), torch.zeros(3), None,
                                                  torch.tensor([1, 2], device=m), False), "seed"),
    (lambda m: torch.ops.aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3, device=m), "bce", 1.0,
                                              [False, False]), "fake_logits"),
    (lambda m: torch.ops.aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3),
                                            torch.zeros(2, 3, device=m), "bce", torch.tensor(1.0, dtype=torch.float64),
                                            "mean", [False] * 4), "logvar"),
])
def test_raw_ops_refuse_one_meta_argument_beside_real_tensors(call, name):
    """One meta argument sends a raw op call to its fake kernel: it must raise the real op's
    error, not hand back an uninitialised CPU tensor."""
    with pytest.raises(ValueError, match=f"{name} must be on the same device as"):
        call("meta")


def test_a_gpu_the_cuda_kernels_were_not_built_for_falls_back(monkeypatch):
    """The default build without a visible GPU (8.0;9.0+PTX) cannot run on a Turing card:
    the op must fall back to the reference (saying why), not fail at launch."""
    from aigc_fast import _extension, _impl

    assert _impl.built_cuda_archs("8.0;9.0+PTX;9.0a") == [(8, 0, "sm"), (9, 0, "ptx"), (9, 0, "exact")]
    assert _impl.built_cuda_archs("visible GPUs") == [] and _impl.built_cuda_archs("Ampere") == []
    assert _impl._arch_mismatch("9.0a", (9, 0)) is None and "cannot run" in _impl._arch_mismatch("9.0a", (10, 0))
    monkeypatch.setattr(_extension, "LOADED", True)
    monkeypatch.setattr(_extension, "compiled_backends", lambda: ["cpu", "cuda"])
    monkeypatch.setitem(_extension.BUILD_INFO, "cuda_archs", "8.0;9.0+PTX")
    cuda = torch.device("cuda", 0)
    for capability, runs in [((7, 5), False), ((8, 0), True), ((8, 6), True), ((8, 9), True), ((9, 0), True),
                             ((10, 0), True), ((12, 0), True)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        reason = _impl.fused_unavailable_reason(cuda)
        assert (reason is None) == runs, (capability, reason)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))
    assert "reinstall with TORCH_CUDA_ARCH_LIST=7.5" in _impl.fused_unavailable_reason(cuda)
    assert not _impl.use_fused(None, "reparameterize", cuda)
    with pytest.raises(RuntimeError, match="compute capability 7.5"):
        _impl.use_fused("fused", "reparameterize", cuda)


# Each op's call with small valid inputs (float64), as users make it.
_OP_CALLS = {
    "reparameterize": lambda impl: aigc_fast.reparameterize(torch.randn(4, 3, dtype=torch.float64),
                                                            torch.randn(4, 3, dtype=torch.float64), impl=impl),
    "gan_d_loss": lambda impl: aigc_fast.gan_d_loss(torch.randn(4, dtype=torch.float64),
                                                    torch.randn(4, dtype=torch.float64), impl=impl),
    "gan_g_loss": lambda impl: aigc_fast.gan_g_loss(torch.randn(4, dtype=torch.float64), impl=impl),
    "vae_loss": lambda impl: aigc_fast.vae_loss(torch.randn(4, 6, dtype=torch.float64), torch.rand(4, 6, dtype=torch.float64),
                                                torch.randn(4, 3, dtype=torch.float64),
                                                torch.randn(4, 3, dtype=torch.float64), impl=impl),
    "bias_act": lambda impl: aigc_fast.bias_act(torch.randn(2, 3, 4, 4, dtype=torch.float64),
                                                torch.randn(3, dtype=torch.float64), "tanh", impl=impl),
    "bn_act": lambda impl: aigc_fast.bn_act(torch.randn(2, 3, 4, 4, dtype=torch.float64), None, None, None, None,
                                            training=True, impl=impl),
}


@requires_fused
@pytest.mark.parametrize("op", _OP_CALLS)
def test_the_reference_choice_runs_no_kernel_and_the_default_runs_one(op):
    """Every test that compares the fused op with impl="reference" relies on the choice
    reaching the op: the values alone cannot tell (they agree to ~1e-12 in float64)."""
    call = _OP_CALLS[op]
    for choose in (lambda: call("reference"), lambda: _under_reference(call)):
        with FusedOpCounter() as ops:
            choose()
        assert not ops.calls, f"{op} ran {dict(ops.calls)} with the reference chosen"
    with FusedOpCounter() as ops:
        call(None)
    assert ops.calls[op] == 1


def _under_reference(call):
    with aigc_fast.use_impl("reference"):
        return call(None)

