//! A small, stable 64-bit hash. Stability matters more than speed here: the
//! same key must map to the same server on every convoy node and across
//! convoy versions, so the std `DefaultHasher` (whose algorithm may change)
//! is not used. FNV-1a over the bytes, then the murmur3 64-bit finalizer to
//! spread the bits.

/// Hashes `bytes` with `seed` into a well-mixed 64-bit value.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// The murmur3 64-bit finalizer.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned so that a change of algorithm (which would remap every
        // client of every cluster on upgrade) is caught.
        assert_eq!(hash64(b"", 0), fmix64(0xcbf2_9ce4_8422_2325));
        assert_ne!(hash64(b"a", 0), hash64(b"b", 0));
        assert_ne!(hash64(b"a", 0), hash64(b"a", 1));
        assert_eq!(hash64(b"server-1", 7), hash64(b"server-1", 7));
    }
}
