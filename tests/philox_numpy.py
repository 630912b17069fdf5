"""An independent NumPy Philox4x32-10 + Box-Muller in float64: the oracle for the
kernels' noise (checked itself against the Random123 known-answer vectors)."""

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr, key):
    """ctr: uint32 array [4, n]; key: two ints. Returns uint32 [4, n]."""
    c = [np.asarray(w, dtype=np.uint64) for w in ctr]
    k0, k1 = key
    for _ in range(10):
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & MASK, (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & MASK]
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return np.stack(c).astype(np.uint32)


def bits(seed, offset, n_blocks):
    counter = (np.uint64(offset) + np.arange(n_blocks, dtype=np.uint64))
    zeros = np.zeros(n_blocks, dtype=np.uint64)
    return philox4x32_10([counter & MASK, counter >> np.uint64(32), zeros, zeros], (seed & 0xFFFFFFFF, seed >> 32))


def normals(seed, offset, n):
    """The noise of elements 0..n-1 of stream (seed, offset), in float64."""
    w = bits(seed, offset, (n + 3) // 4).astype(np.float64)
    out = np.empty((w.shape[1], 4))
    for pair, (a, b) in enumerate(((0, 1), (2, 3))):
        u = w[a] * 2.0**-32 + 2.0**-33
        radius = np.sqrt(-2.0 * np.log(u))
        angle = 2 * np.pi * w[b] * 2.0**-32
        out[:, 2 * pair] = radius * np.cos(angle)
        out[:, 2 * pair + 1] = radius * np.sin(angle)
    return out.reshape(-1)[:n]
