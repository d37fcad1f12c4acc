//! A small mutation fuzzer that runs under `cargo test` on the stable toolchain.
//!
//! Each run replays the target's seed corpus (`fuzz/corpus/<target>/`), then feeds it inputs made
//! by mutating corpus entries (havoc-style: bit flips, interesting integers, dictionary tokens,
//! splices, cuts) and some wholly random ones, from a seeded RNG, until a time or iteration bound.
//! A run with the same seed, corpus and binary feeds the same inputs.
//!
//! A failure is any panic while an input runs, on the calling thread or on any other thread of the
//! process (a server task, the Raft thread): a panic hook counts them. The input is written to
//! `fuzz/artifacts/<target>/` and the test fails with the command that replays it.
//!
//! Settings (environment):
//! - `FUZZ_SECONDS`: how long each target runs after its corpus (default 3).
//! - `FUZZ_ITERATIONS`: an upper bound on generated inputs (default none).
//! - `FUZZ_SEED`: the RNG seed, a number (default 1), or `random` for one from the clock.
//! - `FUZZ_INPUT`: a file; runs only that input (to replay a crash).

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// SplitMix64: a small seeded generator, the same numbers on every platform for a seed.
pub struct SmallRng(u64);

impl SmallRng {
    pub fn seed_from_u64(seed: u64) -> SmallRng {
        SmallRng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range` (start inclusive, end exclusive, end above start).
    fn below(&mut self, start: usize, end: usize) -> usize {
        start + (self.next_u64() % (end - start) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

/// One fuzz target.
pub struct Target {
    /// Its name: the corpus folder and the test's name.
    pub name: &'static str,
    /// Runs one input. Panics on a failed check.
    pub run: fn(&[u8]),
    /// Tokens the mutator inserts (field names, paths, magic values).
    pub dict: &'static [&'static [u8]],
    /// Longest input generated.
    pub max_len: usize,
}

/// Panics seen anywhere in the process since it started.
static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();
/// One target at a time, so that a panic on another thread is charged to the right input.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The folder of `target`'s seed corpus.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v} is not a number"),
    }
}

fn seed() -> u64 {
    match std::env::var("FUZZ_SEED").as_deref() {
        Err(_) => 1,
        Ok("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("FUZZ_SEED={v} is neither a number nor `random`")),
    }
}

/// The corpus files of `target`, sorted by name.
pub fn load_corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// Runs `target` for the configured bound; panics with a replay command on the first failure.
pub fn fuzz(target: &Target) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });

    if let Ok(path) = std::env::var("FUZZ_INPUT") {
        // cargo runs tests in fuzz/; a relative path may also be meant from the repository root.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&path);
        let file = if Path::new(&path).exists() {
            PathBuf::from(&path)
        } else {
            root
        };
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("FUZZ_INPUT={path}: {e}"));
        check_one(target, &data, &format!("FUZZ_INPUT={path}"), 0);
        eprintln!("fuzz {}: {path} passed", target.name);
        return;
    }

    let seconds: f64 = env_num("FUZZ_SECONDS").unwrap_or(3.0);
    let iterations: Option<u64> = env_num("FUZZ_ITERATIONS");
    let seed = seed();
    let corpus = load_corpus(target.name);
    assert!(
        !corpus.is_empty(),
        "no seed corpus in {} (cargo run --manifest-path fuzz/Cargo.toml --bin make-corpus)",
        corpus_dir(target.name).display()
    );
    let started = Instant::now();
    for (path, data) in &corpus {
        check_one(
            target,
            data,
            &format!("corpus file {}", path.display()),
            seed,
        );
    }
    let inputs: Vec<&[u8]> = corpus.iter().map(|(_, d)| d.as_slice()).collect();
    // The target's name joins the seed, so that targets do not walk the same random sequence.
    let mut rng = SmallRng::seed_from_u64(seed ^ fnv(target.name.as_bytes()));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline && iterations.is_none_or(|max| n < max) {
        let input = generate(&mut rng, &inputs, target.dict, target.max_len);
        check_one(target, &input, &format!("seed {seed}, input {n}"), seed);
        n += 1;
    }
    eprintln!(
        "fuzz {}: {} corpus inputs and {n} generated (seed {seed}) in {:.1}s, no failure",
        target.name,
        corpus.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Runs one input; on a panic saves it and fails with how to replay it.
fn check_one(target: &Target, data: &[u8], what: &str, seed: u64) {
    let before = PANICS.load(Ordering::SeqCst);
    let caught = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(data)));
    let panicked = caught.is_err() || PANICS.load(Ordering::SeqCst) != before;
    if !panicked {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(target.name);
    let path = dir.join(format!("crash-{:016x}", fnv(data)));
    let saved = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, data));
    let saved = match saved {
        Ok(()) => format!("saved to {}", path.display()),
        Err(e) => format!("not saved ({e})"),
    };
    panic!(
        "fuzz target {} failed on {what} (FUZZ_SEED={seed}); the input ({} bytes) is {saved}; replay: \
         FUZZ_INPUT={} scripts/fuzz --exact {}",
        target.name,
        data.len(),
        path.display(),
        target.name
    );
}

/// FNV-1a, for file names and seed mixing.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One new input: mostly a mutated corpus entry, sometimes random bytes.
fn generate(rng: &mut SmallRng, corpus: &[&[u8]], dict: &[&[u8]], max_len: usize) -> Vec<u8> {
    if rng.below(0, 16) == 0 {
        let len = rng.below(0, max_len.min(512) + 1);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut data = corpus[rng.below(0, corpus.len())].to_vec();
    let rounds = 1 << rng.below(0, 4);
    for _ in 0..rounds {
        mutate(rng, &mut data, corpus, dict);
    }
    data.truncate(max_len);
    data
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    15,
    16,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

fn mutate(rng: &mut SmallRng, data: &mut Vec<u8>, corpus: &[&[u8]], dict: &[&[u8]]) {
    let len = data.len();
    match rng.below(0, 12) {
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.below(0, len);
            data[i] ^= 1 << rng.below(0, 8);
        }
        // A random byte.
        1 if len > 0 => {
            let i = rng.below(0, len);
            data[i] = rng.byte();
        }
        // Add or subtract a little.
        2 if len > 0 => {
            let i = rng.below(0, len);
            let d = rng.below(1, 9) as u8;
            data[i] = if rng.coin() {
                data[i].wrapping_add(d)
            } else {
                data[i].wrapping_sub(d)
            };
        }
        // An interesting integer, 1/2/4/8 bytes, either byte order.
        3 if len > 0 => {
            let v = INTERESTING[rng.below(0, INTERESTING.len())];
            let width = 1 << rng.below(0, 4);
            let bytes = if rng.coin() {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let bytes = if rng.coin() {
                &bytes[..width]
            } else {
                &bytes[8 - width..]
            };
            let i = rng.below(0, len);
            let end = (i + width).min(len);
            data[i..end].copy_from_slice(&bytes[..end - i]);
        }
        // Delete a range.
        4 if len > 0 => {
            let i = rng.below(0, len);
            let n = rng.below(1, (len - i).min(64) + 1);
            data.drain(i..i + n);
        }
        // Insert random bytes.
        5 => {
            let i = rng.below(0, len + 1);
            let n = rng.below(1, 17);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            data.splice(i..i, bytes);
        }
        // Copy a range of itself elsewhere.
        6 if len > 0 => {
            let from = rng.below(0, len);
            let n = rng.below(1, (len - from).min(64) + 1);
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(0, len + 1);
            data.splice(at..at, chunk);
        }
        // Insert a dictionary token.
        7 if !dict.is_empty() => {
            let tok = dict[rng.below(0, dict.len())];
            let at = rng.below(0, len + 1);
            data.splice(at..at, tok.iter().copied());
        }
        // Overwrite with a dictionary token.
        8 if !dict.is_empty() && len > 0 => {
            let tok = dict[rng.below(0, dict.len())];
            let at = rng.below(0, len);
            let end = (at + tok.len()).min(len);
            data[at..end].copy_from_slice(&tok[..end - at]);
        }
        // Splice: this input's head with another's tail.
        9 => {
            let other = corpus[rng.below(0, corpus.len())];
            let cut = rng.below(0, len + 1);
            let from = rng.below(0, other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Cut the end off.
        10 if len > 0 => {
            let keep = rng.below(0, len);
            data.truncate(keep);
        }
        // Zero a range (what a torn write leaves).
        11 if len > 0 => {
            let i = rng.below(0, len);
            let n = rng.below(1, (len - i).min(512) + 1);
            data[i..i + n].fill(0);
        }
        _ => {
            let i = rng.below(0, len + 1);
            data.insert(i, rng.byte());
        }
    }
}
