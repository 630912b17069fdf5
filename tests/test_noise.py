"""The noise itself: Philox bits against known answers, normals against an independent
float64 implementation, and the statistics of a million draws."""

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import requires_fused
from philox_numpy import normals, philox4x32_10

pytestmark = requires_fused


def noise(n, seed, offset=0, dtype=torch.float32, shape=None):
    shape = shape or (n,)
    zeros = torch.zeros(shape, dtype=dtype)
    z, _ = torch.ops.aigc_fast.reparameterize(zeros, zeros, None, torch.tensor([seed, offset]), False)
    return z


@pytest.mark.parametrize(
    "ctr, key, expected",
    [  # Random123 kat_vectors for philox4x32-10
        ([0, 0, 0, 0], (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0xA4093822, 0x299F31D0),
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ],
)
def test_numpy_oracle_matches_random123_known_answers(ctr, key, expected):
    out = philox4x32_10([np.array([w], dtype=np.uint64) for w in ctr], key)
    assert [int(w[0]) for w in out] == expected


def test_kernel_normals_match_float64_box_muller():
    seed = 0x1F2E3D4C5B6A7988
    got = noise(100_003, seed).double().numpy()
    expected = normals(seed, 0, 100_003)
    # float32 polynomials vs float64 libm: within a few float32 ulps of each value.
    np.testing.assert_allclose(got, expected, rtol=4e-6, atol=4e-6)


def test_a_million_draws_are_standard_normal():
    x = noise(1_000_000, seed=2024).double().numpy()
    assert abs(x.mean()) < 5 / 1000  # 5 standard errors
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / 1_000_000)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    # Neighbours come from the same Philox block (and Box-Muller pair): check they are independent.
    for lag in (1, 2, 3, 4):
        r = np.corrcoef(x[:-lag], x[lag:])[0, 1]
        assert abs(r) < 5 / 1000, f"lag {lag}: correlation {r}"
    # Pairs (cos, sin) of one Box-Muller draw: independent, so their squares are uncorrelated too.
    assert abs(np.corrcoef(x[0::2] ** 2, x[1::2] ** 2)[0, 1]) < 5 / 700


def test_tails_reach_beyond_five_sigma_but_stay_bounded():
    x = noise(4_000_000, seed=7).numpy()
    assert np.isfinite(x).all()
    assert np.abs(x).max() <= np.sqrt(66 * np.log(2)) + 1e-4  # smallest uniform is 2^-33
    expected_beyond_4 = 4_000_000 * 2 * stats.norm.sf(4)
    assert abs((np.abs(x) > 4).sum() - expected_beyond_4) < 5 * np.sqrt(expected_beyond_4)


def test_same_seed_same_noise_and_different_seeds_differ():
    a, b, c = noise(4096, 1), noise(4096, 1), noise(4096, 2)
    assert torch.equal(a, b)
    assert torch.isclose(a, c).float().mean() < 1e-3
    shifted = noise(4096, 1, offset=1)  # offset counts Philox blocks of four
    assert torch.equal(shifted[:-4], a[4:])


def test_noise_does_not_depend_on_thread_count_or_tiling():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = noise(300_001, 9)
        torch.set_num_threads(2)
        two = noise(300_001, 9)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)
    # Element i's noise is the same whether the call covers 10 elements or 300k, and in any shape.
    assert torch.equal(noise(10, 9), one[:10])
    assert torch.equal(noise(0, 9, shape=(300_001 // 7, 7)).reshape(-1), one[: 300_001 // 7 * 7])


def test_kl_partials_do_not_depend_on_thread_count():
    mu = torch.randn(3, 50_000)
    logvar = torch.randn(3, 50_000)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.ops.aigc_fast.reparameterize(mu, logvar, None, torch.tensor([1, 0]), True)[1])
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_noise_is_the_same_in_every_dtype(dtype):
    """The noise is drawn in float32 whatever the dtype, then rounded once."""
    reference = noise(5000, 3)
    torch.testing.assert_close(noise(5000, 3, dtype=dtype), reference.to(dtype), rtol=0, atol=0)


@pytest.mark.slow
def test_more_than_2_to_the_31_elements():
    """64-bit indexing: the last elements of a 2^31 + 8 element tensor get the noise of
    their own index (checked against the NumPy oracle)."""
    n = 2**31 + 8
    zeros = torch.zeros(n, dtype=torch.bfloat16)
    seed = 77
    z, _ = torch.ops.aigc_fast.reparameterize(zeros, zeros, None, torch.tensor([seed, 0]), False)
    tail = z[-16:].double().numpy()
    del z, zeros
    expected = normals(seed, (n - 16) // 4, 16)
    np.testing.assert_allclose(tail, expected, rtol=1e-2, atol=1e-2)


def test_every_cpu_philox_path_draws_the_same_bits():
    """The CPU has three Philox paths (AVX-512 lanes, AVX2 lanes, and portable code the
    compiler vectorizes) and takes the widest the CPU has; AIGC_FAST_PHILOX=avx2|portable
    caps it, and the binary reports the path it took (so a cap that did nothing fails
    here). The counter's low word wraps inside the tensor (offset 2^32 - 9)."""
    import os
    import subprocess
    import sys

    from aigc_fast import _extension
    from aigc_fast._info import cpu_info

    flags = set((cpu_info("flags") or "").split())
    cpu_has = {"avx512": "avx512f" in flags, "avx2": "avx2" in flags, "portable": True}
    built = _extension.runtime_info()["philox_paths"].split()  # a clang build: only "portable"
    widest = next(path for path in ("avx512", "avx2", "portable") if path in built and cpu_has[path])
    probe = (
        "import sys, torch, aigc_fast; z = torch.zeros(100_003);"
        "n, _ = torch.ops.aigc_fast.reparameterize(z, z, None, torch.tensor([31, 2**32 - 9]), False);"
        "torch.save((n, aigc_fast._extension.runtime_info()['philox']), sys.argv[1])"
    )
    expected = noise(100_003, 31, offset=2**32 - 9)
    caps = {"": widest, "avx2": "avx2" if widest != "portable" else "portable", "portable": "portable"}
    for cap, lanes in caps.items():
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"aigc_noise_{os.getpid()}_{cap}.pt")
        env = dict(os.environ, AIGC_FAST_PHILOX=cap)
        run = subprocess.run([sys.executable, "-c", probe, path], env=env, capture_output=True, text=True, cwd=os.path.dirname(path))
        assert run.returncode == 0, run.stderr
        drawn, taken = torch.load(path)
        os.remove(path)
        assert taken == lanes, (cap, taken)
        assert torch.equal(drawn, expected), cap or "widest"


def test_an_unknown_philox_cap_is_reported():
    import os
    import subprocess
    import sys

    env = dict(os.environ, AIGC_FAST_PHILOX="AVX2")
    run = subprocess.run([sys.executable, "-c", "import aigc_fast"], env=env, capture_output=True, text=True,
                         cwd=os.environ.get("TMPDIR", "/tmp"))
    assert run.returncode == 0 and "AIGC_FAST_PHILOX='AVX2' is not one of portable, avx2; ignored" in run.stderr
