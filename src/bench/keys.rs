//! Keys and values for the load: which key request `n` touches, and the bytes it writes.
//!
//! Keys are ASCII decimal numbers left-padded with `0` to `--key-size` bytes, so they sort in number
//! order and read well in `etcdctl get`. A key space of `s` keys holds the numbers `0..s`; the key size
//! must fit the largest of them (checked up front, so no two numbers ever share a key by truncation).
//! Values are `--val-size` pseudo-random bytes, drawn once per client.

/// A small, fast pseudo-random generator (SplitMix64). Reproducible and dependency-free; the load does
/// not need cryptographic randomness, only keys spread evenly over the key space.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`; different seeds give unrelated streams.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`). The modulo bias is below 2^-40 for any key space we accept.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// Chooses the key of each request: random in the key space, or request `n` -> key `n mod space`.
#[derive(Debug, Clone)]
pub struct KeyGen {
    /// Bytes per key.
    size: usize,
    /// Number of distinct keys.
    space: u64,
    /// Request number -> key, instead of random.
    sequential: bool,
}

impl KeyGen {
    /// A generator of `size`-byte keys over `space` keys. Errors if the largest key number does not
    /// fit in `size` digits or either number is zero.
    pub fn new(size: usize, space: u64, sequential: bool) -> Result<KeyGen, String> {
        if size == 0 {
            return Err("--key-size must be at least 1".into());
        }
        if space == 0 {
            return Err("--key-space-size must be at least 1".into());
        }
        let digits = (space - 1).to_string().len();
        if digits > size {
            return Err(format!(
                "--key-size {size} cannot hold {space} distinct keys (needs {digits} bytes)"
            ));
        }
        Ok(KeyGen {
            size,
            space,
            sequential,
        })
    }

    /// The key number `i` as a key.
    pub fn key_of(&self, i: u64) -> Vec<u8> {
        format!("{:0width$}", i % self.space, width = self.size).into_bytes()
    }

    /// The key for request number `n`.
    pub fn key(&self, n: u64, rng: &mut Rng) -> Vec<u8> {
        if self.sequential {
            self.key_of(n)
        } else {
            self.key_of(rng.below(self.space))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_and_stay_in_the_space() {
        let g = KeyGen::new(8, 100, false).unwrap();
        assert_eq!(g.key_of(7), b"00000007");
        let mut rng = Rng::new(1);
        for n in 0..1000 {
            let k = g.key(n, &mut rng);
            assert_eq!(k.len(), 8);
            let v: u64 = std::str::from_utf8(&k).unwrap().parse().unwrap();
            assert!(v < 100);
        }
    }

    #[test]
    fn sequential_keys_wrap_around_the_space() {
        let g = KeyGen::new(3, 10, true).unwrap();
        let mut rng = Rng::new(1);
        assert_eq!(g.key(3, &mut rng), b"003");
        assert_eq!(g.key(13, &mut rng), b"003");
    }

    #[test]
    fn a_key_size_too_small_for_the_space_is_refused() {
        assert!(KeyGen::new(2, 100, false).is_ok());
        assert!(KeyGen::new(2, 101, false).is_err());
        assert!(KeyGen::new(0, 1, false).is_err());
        assert!(KeyGen::new(8, 0, false).is_err());
    }

    #[test]
    fn values_have_the_asked_length_and_random_keys_spread() {
        let mut rng = Rng::new(42);
        assert_eq!(rng.bytes(0).len(), 0);
        assert_eq!(rng.bytes(13).len(), 13);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}
