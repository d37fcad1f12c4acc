#![allow(dead_code)]
//! Linearizability checker for histories of a key-value store (Knossos/porcupine style).
//!
//! What it checks: whether a recorded concurrent history of client operations could have been produced by
//! a single, atomic key-value store, where every operation takes effect at one instant between its call
//! and its return (linearizability, Herlihy & Wing 1990).
//!
//! The model: every key is an independent register holding `Option<String>`; a key starts absent
//! (`None`). [`Kind::Put`] sets the value and returns [`Output::Ok`]; [`Kind::Get`] returns
//! [`Output::Value`] with the current value; [`Kind::Cas`] swaps in `new` iff the current value equals
//! `expected` (`None` = "the key is absent") and returns [`Output::Swapped`]; [`Kind::Delete`] makes the
//! key absent and returns [`Output::Ok`]. Linearizability is local (Herlihy & Wing): a history is
//! linearizable iff its restriction to each object is, so [`check`] partitions the history by key and
//! checks each key on its own. That is exact for this model because no operation touches two keys.
//!
//! Indeterminate operations: an operation whose outcome the client never learned (error, timeout,
//! dropped connection) has `output: None`. It may or may not have taken effect, at any time after its
//! call, so it is treated as returning at +infinity with any output allowed (its `ret` is ignored). It
//! can therefore always be placed after everything else, which is the same as "never took effect".
//! Indeterminate `Get`s constrain nothing and are dropped before the search.
//!
//! The algorithm: Wing & Gong's backtracking search with Lowe's memoization, as in porcupine. The calls
//! and returns of one key's operations form a doubly linked list sorted by time (a call sorts before a
//! return with the same timestamp, so an operation that returns at `t` and one called at `t` count as
//! concurrent: the checker never relies on an order the timestamps cannot prove). The search takes a
//! call from the list whose model step is consistent with the current value, removes its call and
//! return ("places" it), and starts over from the head; reaching a return event means that operation's
//! deadline passed unplaced, so it undoes the last choice and tries the next call after it. The
//! history is linearizable iff every determinate operation gets placed. On top of that, pruning rules,
//! each argued in the code to lose no linearization:
//! - a cache of configurations (placed set, value) known to fail (porcupine's cache, generalized so that
//!   a failure with fewer indeterminate operations placed also covers one with more);
//! - a `Get` or failed `Cas` that is consistent now is placed at once, without branching on it;
//! - values that no unplaced operation reads or expects are merged into one;
//! - an indeterminate operation is only placed where it changes the value and the next operation needs
//!   that change, and of the indeterminate writes of unobserved values only the earliest called.
//!
//! The tests compare the checker with an exhaustive search on thousands of small random histories.
//!
//! Limits:
//! - The problem is NP-complete, so the search per key is bounded by a step budget (one step = one
//!   visit of a list entry). When it runs out the verdict is [`Verdict::Unknown`], which is neither a
//!   pass nor a proof of a violation: callers must treat it as a test failure. A linearizable history
//!   with ~10 concurrent clients takes a few tens of steps per operation (3,000 operations: well under
//!   a second in a debug build). Proving a violation means refuting every ordering, which costs more,
//!   and grows fast with the number of indeterminate writes pending at once: a violation near the end
//!   of 2,000 operations with 2% indeterminate writes can take millions of steps. A debug build does
//!   roughly 5-10 million steps a second; memory is about 100 bytes per cached failure, fewer than
//!   one per 20 steps.
//! - Timestamps are taken by the clients; they must bracket the real request (call before sending,
//!   return after the response arrived). The [`Recorder`] does that with one monotonic clock.
//! - Only single-key operations are modelled: no transactions, ranges, revisions, leases or watches.
//! - A [`Verdict::Violation`] names one key (the first, in key order, that has a violation) and the
//!   longest prefix the search could linearize there; that prefix is one witness, not the only one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A step budget per key that is generous for tests: a few seconds and a few tens of MB at most in a
/// debug build, and hundreds of times what a typical linearizable history of a few thousand
/// operations needs.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// What a client asked for, on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Set the value; output [`Output::Ok`].
    Put(String),
    /// Read the value; output [`Output::Value`].
    Get,
    /// Set the value to `new` iff it equals `expected` (`None` = absent); output [`Output::Swapped`].
    Cas {
        expected: Option<String>,
        new: String,
    },
    /// Make the key absent; output [`Output::Ok`].
    Delete,
}

/// What the client was told. Each [`Kind`] has exactly one matching shape (see [`Kind`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Ok,
    Value(Option<String>),
    Swapped(bool),
}

/// One operation of the history. Times are nanoseconds since an arbitrary common origin.
///
/// The operation is indeterminate iff `output` is `None`: then `ret` is ignored (a request that timed
/// out can still take effect later). A determinate operation must have `ret: Some(t)` with `t >= call`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    pub kind: Kind,
    pub call: u64,
    pub ret: Option<u64>,
    pub output: Option<Output>,
}

impl Operation {
    /// An operation whose outcome the client learned.
    pub fn completed(
        client: u64,
        key: &str,
        kind: Kind,
        call: u64,
        ret: u64,
        output: Output,
    ) -> Self {
        Operation {
            client,
            key: key.to_string(),
            kind,
            call,
            ret: Some(ret),
            output: Some(output),
        }
    }

    /// An operation whose outcome the client never learned (error or timeout after the call).
    pub fn indeterminate(client: u64, key: &str, kind: Kind, call: u64) -> Self {
        Operation {
            client,
            key: key.to_string(),
            kind,
            call,
            ret: None,
            output: None,
        }
    }

    pub fn is_indeterminate(&self) -> bool {
        self.output.is_none()
    }

    /// Why this operation cannot be checked, if it cannot: an output of the wrong shape for its kind,
    /// or a determinate operation without a return time or returning before its call.
    fn malformed(&self) -> Option<String> {
        let Some(output) = &self.output else {
            return None;
        };
        let shape_ok = matches!(
            (&self.kind, output),
            (Kind::Put(_) | Kind::Delete, Output::Ok)
                | (Kind::Get, Output::Value(_))
                | (Kind::Cas { .. }, Output::Swapped(_))
        );
        match self.ret {
            _ if !shape_ok => Some("output does not match the kind".to_string()),
            None => Some("determinate operation without a return time".to_string()),
            Some(ret) if ret < self.call => Some("returns before its call".to_string()),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Operation {
    /// One readable line: `[client 3] cas("v1" -> "v2") -> swapped  @[120, 340]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[client {}] ", self.client)?;
        match &self.kind {
            Kind::Put(v) => write!(f, "put({v:?})")?,
            Kind::Get => write!(f, "get")?,
            Kind::Cas { expected, new } => write!(f, "cas({} -> {new:?})", show_value(expected))?,
            Kind::Delete => write!(f, "delete")?,
        }
        match &self.output {
            None => write!(f, " -> indeterminate  @[{}, inf)", self.call),
            Some(output) => {
                match output {
                    Output::Ok => write!(f, " -> ok")?,
                    Output::Value(v) => write!(f, " -> {}", show_value(v))?,
                    Output::Swapped(true) => write!(f, " -> swapped")?,
                    Output::Swapped(false) => write!(f, " -> not swapped")?,
                }
                match self.ret {
                    Some(ret) => write!(f, "  @[{}, {ret}]", self.call),
                    None => write!(f, "  @[{}, ?]", self.call),
                }
            }
        }
    }
}

fn show_value(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "absent".to_string(),
    }
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history has a linearization.
    Linearizable,
    /// `key`'s history has no linearization; `detail` explains where the search got stuck.
    Violation { key: String, detail: String },
    /// The step budget ran out on `key` before the search finished: nothing was proved either way.
    Unknown { key: String },
}

impl Verdict {
    /// Panics unless the verdict is [`Verdict::Linearizable`]; an `Unknown` verdict fails too, loudly.
    #[track_caller]
    pub fn assert_linearizable(&self) {
        if *self != Verdict::Linearizable {
            panic!("{self}");
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::Violation { key, detail } => {
                write!(f, "linearizability violation on key {key:?}:\n{detail}")
            }
            Verdict::Unknown { key } => write!(
                f,
                "linearizability UNKNOWN on key {key:?}: the step budget ran out before the search \
                 finished; this is not a pass"
            ),
        }
    }
}

/// Records a history from many threads. Clones share one history and one clock origin, so the
/// timestamps of all clones are comparable.
#[derive(Clone)]
pub struct Recorder {
    origin: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A new, empty history whose clock origin is now.
    pub fn new() -> Self {
        Recorder {
            origin: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts an operation: call this right before sending the request. The returned [`Pending`] must be
    /// finished with [`Pending::ok`] right after the response arrived, or [`Pending::unknown`] on an error
    /// or timeout; if it is dropped unfinished it is recorded as indeterminate.
    pub fn call(&self, client: u64, key: impl Into<String>, kind: Kind) -> Pending {
        let call = self.now();
        Pending {
            recorder: self.clone(),
            op: Some(Operation {
                client,
                key: key.into(),
                kind,
                call,
                ret: None,
                output: None,
            }),
        }
    }

    /// A copy of the operations finished so far, in the order they finished.
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().clone()
    }

    /// Checks the operations finished so far; see [`check`].
    pub fn check(&self, budget_per_key: u64) -> Verdict {
        check(&self.operations(), budget_per_key)
    }

    /// Nanoseconds since the origin. `Instant` is monotonic, so a return is never before its call.
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation>> {
        // A panicking client thread must not hide the rest of the history (or panic again in a drop).
        self.ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An operation that was called and has not finished. Finish it with [`Pending::ok`] or
/// [`Pending::unknown`]; dropping it unfinished records it as indeterminate, so no operation that may
/// have taken effect can silently vanish from the history.
pub struct Pending {
    recorder: Recorder,
    op: Option<Operation>,
}

impl Pending {
    /// The client got `output`. Panics if its shape does not match the kind (a bug in the test).
    pub fn ok(mut self, output: Output) {
        let mut op = self.op.take().expect("a Pending is finished once");
        op.ret = Some(self.recorder.now());
        op.output = Some(output);
        if let Some(why) = op.malformed() {
            panic!("lincheck: malformed operation ({why}): {op}");
        }
        self.recorder.lock().push(op);
    }

    /// The operation certainly did not take effect (the request never reached a server, or the
    /// server refused it before proposing it): it is left out of the history. Use only where that
    /// is certain; when in doubt, [`Pending::unknown`].
    pub fn failed(mut self) {
        self.op.take();
    }

    /// The client got an error or a timeout: the operation may or may not take effect.
    pub fn unknown(mut self) {
        if let Some(op) = self.op.take() {
            self.recorder.lock().push(op);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            self.recorder.lock().push(op);
        }
    }
}

/// Checks `ops` (in any order) for linearizability against the per-key register model, spending at
/// most `budget_per_key` search steps on each key.
///
/// If any key has a violation, the verdict is the `Violation` of the first such key in key order (a
/// violation is a proof, so it wins over another key's `Unknown`); otherwise the first key whose budget
/// ran out gives `Unknown`. Panics on a malformed operation (see [`Operation`]): that is a bug in the
/// recorder, not a property of the system under test.
pub fn check(ops: &[Operation], budget_per_key: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        if let Some(why) = op.malformed() {
            panic!("lincheck: malformed operation ({why}): {op}");
        }
        // An indeterminate read changes nothing and promises nothing.
        if op.is_indeterminate() && op.kind == Kind::Get {
            continue;
        }
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut unknown = None;
    for (key, key_ops) in by_key {
        match check_key(&key_ops, budget_per_key) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation(detail) => {
                return Verdict::Violation {
                    key: key.to_string(),
                    detail,
                };
            }
            KeyVerdict::Unknown => {
                unknown.get_or_insert_with(|| key.to_string());
            }
        }
    }
    match unknown {
        Some(key) => Verdict::Unknown { key },
        None => Verdict::Linearizable,
    }
}

enum KeyVerdict {
    Linearizable,
    Violation(String),
    Unknown,
}

/// The register value as the search sees it: `ABSENT`, `UNOBSERVED`, or an id of one value that some
/// `Get` returned or some `Cas` expected.
const ABSENT: u32 = 0;

/// Every value that no `Get` returned and no `Cas` expected. Merging them loses nothing: whether an
/// operation is consistent, and what it leaves, depends on the value only through comparisons with
/// returned and expected values, which all these values fail alike. It makes configurations that
/// differ only in which unobserved value the register holds one configuration for the cache.
const UNOBSERVED: u32 = 1;

/// An operation's effect on the register, with its recorded output folded in.
#[derive(Clone, Copy)]
enum Step {
    /// `Put` (to a value) or `Delete` (to `ABSENT`): always consistent, ignores the value it finds.
    Write(u32),
    /// A `Get` that observed this value.
    Read(u32),
    /// `swapped: None` = indeterminate.
    Cas {
        expected: u32,
        new: u32,
        swapped: Option<bool>,
    },
}

impl Step {
    /// The register value after this operation if it is consistent with `state`, else `None`.
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Write(v) => Some(v),
            Step::Read(v) => (v == state).then_some(state),
            Step::Cas {
                expected,
                new,
                swapped,
            } => {
                let hit = expected == state;
                match swapped {
                    Some(swapped) if swapped != hit => None,
                    _ => Some(if hit { new } else { state }),
                }
            }
        }
    }
}

/// The search's view of one operation of the key.
struct Op {
    step: Step,
    /// It has an output, and a return time that bounds where it can be placed.
    determinate: bool,
    /// It never changes the register, going by its recorded output: a `Get`, or a `Cas` that reported
    /// no swap. Such operations are placed eagerly and never branched on (see `Search::first_entry`).
    read_only: bool,
    /// The value it compares the register with: what a `Get` returned, what a `Cas` expected.
    observes: Option<u32>,
    /// Its bit in `Config::det` (determinate) or `Config::indet` (indeterminate).
    slot: usize,
    /// Its call and return events in the list.
    call: usize,
    ret: usize,
}

/// The list sentinels: node `HEAD` precedes all events; the tail node follows them.
const HEAD: usize = 0;

/// Wing & Gong's doubly linked list of the call and return events of the operations not yet placed,
/// sorted by time; node `HEAD` and a tail node are sentinels.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation of each node, and whether the node is its call (else its return).
    op: Vec<usize>,
    is_call: Vec<bool>,
}

impl Events {
    /// Unlinks an operation's call and return nodes.
    fn lift(&mut self, op: &Op) {
        for node in [op.call, op.ret] {
            self.next[self.prev[node]] = self.next[node];
            self.prev[self.next[node]] = self.prev[node];
        }
    }

    /// Links them back. Lifts are undone in LIFO order, so the neighbours still recorded in the two
    /// nodes are exactly the nodes around them again; relinking in the reverse order of the lift
    /// restores the list exactly.
    fn unlift(&mut self, op: &Op) {
        for node in [op.ret, op.call] {
            self.next[self.prev[node]] = node;
            self.prev[self.next[node]] = node;
        }
    }
}

/// A configuration of the search, apart from the list (which follows from the placed set).
struct Config {
    /// The placed determinate operations, one bit each, numbered in call order.
    det: Vec<u64>,
    /// The register value in the low 32 bits and the constraint (see `Search::constraint`) plus one in
    /// the high 32 bits.
    word: u64,
    /// The placed indeterminate operations, one bit each.
    indet: Vec<u64>,
    /// Zobrist hash of the placed operations: the XOR of `mix(op + 1)` over them. Kept up to date in
    /// O(1) per move, so a cache lookup costs no rehash of the bitsets; equality is still decided on
    /// the sets themselves, so a collision costs time, never correctness.
    placed_hash: u64,
}

impl Config {
    /// Places or unplaces operation `index`.
    fn toggle(&mut self, index: usize, op: &Op) {
        let bits = if op.determinate {
            &mut self.det
        } else {
            &mut self.indet
        };
        bits[op.slot / 64] ^= 1 << (op.slot % 64);
        self.placed_hash ^= mix(index as u64 + 1);
    }

    fn set_word(&mut self, state: u32, constraint: Option<u32>) {
        self.word = u64::from(state) | constraint.map_or(0, |before| (u64::from(before) + 1) << 32);
    }

    /// The hash of this configuration with `word` as its last word.
    fn hash_with(&self, word: u64) -> u64 {
        self.placed_hash ^ mix(word ^ 0x5851_f42d_4c95_7f2d)
    }

    /// Appends the determinate set in a compact, canonical form: the number of operations placed
    /// before the first unplaced one (in call order), then the numbers of the placed ones after it.
    /// Placed sets are nearly prefixes of the call order (an operation is placed before everything
    /// called after it returned), so this takes a few numbers instead of one bit per operation.
    fn encode_det(&self, out: &mut Vec<u32>) {
        let first_gap = self
            .det
            .iter()
            .position(|&w| w != u64::MAX)
            .map_or(self.det.len() * 64, |w| {
                w * 64 + self.det[w].trailing_ones() as usize
            });
        out.push(first_gap as u32);
        for (w, &bits) in self.det.iter().enumerate().skip(first_gap / 64) {
            let mut bits = bits;
            while bits != 0 {
                let slot = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if slot > first_gap {
                    out.push(slot as u32);
                }
            }
        }
    }
}

/// The configurations known to have no completion (Lowe's cache, extended for indeterminate operations).
///
/// A configuration A is dominated by a failed F with the same determinate set and value, a subset of
/// A's indeterminate set, and either A's constraint or none: F can follow any completion of A, leaving
/// the indeterminate operations A has and F lacks unplaced (their returns are at +infinity), so if A had
/// a completion F would have one. Without indeterminate operations this is exactly porcupine's cache.
/// Only configurations that were fully explored are inserted, so a configuration on the current path
/// never prunes its own descendants.
#[derive(Default)]
struct Failed {
    /// By `Config::hash_with`: the newest entry with that hash; entries chain to older ones.
    heads: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    entries: Vec<FailedEntry>,
    /// The entries' keys back to back: `Config::encode_det`, the last word as two halves, then the
    /// indeterminate set as 32-bit halves. About 100 bytes per entry for typical histories.
    data: Vec<u32>,
    /// Scratch space for the key being looked up.
    key: Vec<u32>,
}

struct FailedEntry {
    start: u32,
    len: u32,
    /// The next older entry with the same hash, or `u32::MAX`.
    older: u32,
}

impl Failed {
    fn dominates(&mut self, config: &Config) -> bool {
        self.key.clear();
        config.encode_det(&mut self.key);
        let unconstrained = config.word & u64::from(u32::MAX);
        self.dominated_with(config, config.word)
            || (config.word != unconstrained && self.dominated_with(config, unconstrained))
    }

    /// Whether a failed configuration has the determinate set encoded in `key`, `word` as its last
    /// word, and a subset of `config`'s indeterminate set.
    fn dominated_with(&self, config: &Config, word: u64) -> bool {
        let halves = [word as u32, (word >> 32) as u32];
        let mut at = self
            .heads
            .get(&config.hash_with(word))
            .copied()
            .unwrap_or(u32::MAX);
        while let Some(entry) = self.entries.get(at as usize) {
            let data = &self.data[entry.start as usize..][..entry.len as usize];
            let (det, rest) = data.split_at(data.len() - 2 - 2 * config.indet.len());
            if det == self.key.as_slice()
                && rest[..2] == halves
                && rest[2..]
                    .chunks_exact(2)
                    .zip(&config.indet)
                    .all(|(failed, &placed)| {
                        (u64::from(failed[0]) | u64::from(failed[1]) << 32) & !placed == 0
                    })
            {
                return true;
            }
            at = entry.older;
        }
        false
    }

    /// Records that `config` has no completion.
    fn insert(&mut self, config: &Config) {
        let start = self.data.len();
        config.encode_det(&mut self.data);
        self.data
            .extend([config.word as u32, (config.word >> 32) as u32]);
        for &bits in &config.indet {
            self.data.extend([bits as u32, (bits >> 32) as u32]);
        }
        let index =
            u32::try_from(self.entries.len()).expect("fewer than 2^32 failed configurations");
        let older = self
            .heads
            .insert(config.hash_with(config.word), index)
            .unwrap_or(u32::MAX);
        self.entries.push(FailedEntry {
            start: u32::try_from(start).expect("failed configurations fit in 16 GiB"),
            len: (self.data.len() - start) as u32,
            older,
        });
    }
}

/// The hasher of `Failed`'s map, whose keys are already hashes (see `Config::placed_hash`).
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u64` keys; a plain fold keeps the trait contract for any other caller.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

/// SplitMix64's finalizer: a bijective mix, so distinct inputs give distinct, well-spread outputs.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One placed operation on the search stack.
struct Frame {
    op: usize,
    /// The register value before it.
    before: u32,
    /// Placed eagerly as read-only: not a choice, so never an alternative to backtrack to.
    eager: bool,
}

/// The search state for one key.
struct Search {
    ops: Vec<Op>,
    events: Events,
    config: Config,
    failed: Failed,
    /// The linearization so far.
    stack: Vec<Frame>,
    state: u32,
    /// How many determinate operations are placed, and how many there are.
    placed_determinate: usize,
    determinate: usize,
    /// For each value id, how many unplaced operations observe it (see `Op::observes`).
    observers: Vec<u32>,
}

impl Search {
    /// The value as far as the unplaced operations can tell: a value that none of them observes is
    /// as good as `UNOBSERVED` (the argument of `UNOBSERVED`, applied to the rest of the search; the
    /// set of unplaced operations is part of the configuration, so this is a function of it).
    /// `leaving` is an operation about to be placed, which no longer counts.
    fn canonical(&self, value: u32, leaving: Option<usize>) -> u32 {
        let mut count = self.observers[value as usize];
        if leaving.is_some_and(|i| self.ops[i].observes == Some(value)) {
            count -= 1;
        }
        if count == 0 {
            UNOBSERVED
        } else {
            value
        }
    }

    /// The constraint left by the last placed operation, if it is indeterminate: the value it replaced.
    ///
    /// The search only places an indeterminate operation where it changes the value (from `before`),
    /// and only follows it with an operation that needs that change: a `Get` or `Cas` that would not
    /// be consistent, or not read-only, from `before`. This loses no linearization: take any, and move
    /// each indeterminate operation that breaks the rule later, past the read-only operation after it
    /// that is also consistent with `before` (which then still sees a consistent value and changes
    /// nothing), or to the very end (where indeterminate operations need no placing) if it changes
    /// nothing, is followed by a `Put` or `Delete` (which overwrites its effect), or follows the last
    /// determinate operation. Every other operation keeps seeing the same value, moving an operation
    /// that returns at +infinity later never breaks real-time order, and each move only moves an
    /// operation later, so the process ends, with a linearization that keeps the rule.
    fn constraint(&self) -> Option<u32> {
        let top = self.stack.last()?;
        (!self.ops[top.op].determinate).then(|| self.canonical(top.before, None))
    }

    /// Whether operation `i` may be placed now, and the value after it.
    fn try_step(&self, i: usize, constraint: Option<u32>) -> Option<u32> {
        let op = &self.ops[i];
        if let Some(before) = constraint {
            let needs_change = match op.step {
                Step::Write(_) => false,
                _ => !op.read_only || op.step.apply(before).is_none(),
            };
            if !needs_change {
                return None;
            }
        }
        let after = self.canonical(op.step.apply(self.state)?, Some(i));
        if op.determinate {
            return Some(after);
        }
        // An indeterminate operation only where it changes the value (see `constraint`).
        if after == self.canonical(self.state, Some(i)) {
            return None;
        }
        // Indeterminate writes of values nobody will observe are interchangeable: each one leaves
        // `UNOBSERVED`, and once called each one stays placeable to the end, so a linearization that
        // places one while another one called earlier is unplaced stays valid with the two swapped
        // (the earlier one takes the place of the later one, which takes the earlier one's later place
        // or stays unplaced). So only the earliest called of them may be placed, which keeps the search
        // from trying every subset of them. The list holds the unplaced calls in call order.
        if after == UNOBSERVED && matches!(op.step, Step::Write(_)) {
            let mut node = self.events.next[HEAD];
            while node != op.call {
                let j = self.events.op[node];
                if let (false, Step::Write(v)) = (self.ops[j].determinate, self.ops[j].step) {
                    if self.canonical(v, None) == UNOBSERVED {
                        return None;
                    }
                }
                node = self.events.next[node];
            }
        }
        Some(after)
    }

    /// Where the search starts at a configuration: the first read-only candidate that may be placed
    /// now, else the first entry of the list. Also returns how many entries it looked at.
    ///
    /// Why placing such an operation `o` first loses nothing: `o` is a candidate (its call comes before
    /// every remaining return), so in any completion of the configuration, moving `o` to the front
    /// breaks no real-time order (nothing remaining returned before `o` was called). It sees the current
    /// value there, as its output says, and at its old position it changed nothing, so every other
    /// operation still sees the same values (an indeterminate operation that relied on `o` following
    /// it is moved on as in `constraint`). Hence if the configuration has a completion, it has one that
    /// starts with `o`, and if placing `o` first fails, the whole configuration fails: no branching.
    fn first_entry(&self) -> (usize, u64) {
        let constraint = self.constraint();
        let mut node = self.events.next[HEAD];
        let mut scanned = 0;
        while self.events.is_call[node] {
            scanned += 1;
            let i = self.events.op[node];
            if self.ops[i].read_only && self.try_step(i, constraint).is_some() {
                return (node, scanned);
            }
            node = self.events.next[node];
        }
        (self.events.next[HEAD], scanned)
    }

    /// Places operation `i`, which `try_step` allowed with the value `after`, unless the configuration
    /// that results is known to fail. Returns whether it placed it.
    fn place(&mut self, i: usize, after: u32) -> bool {
        let op = &self.ops[i];
        self.stack.push(Frame {
            op: i,
            before: self.state,
            eager: op.read_only,
        });
        if let Some(v) = op.observes {
            self.observers[v as usize] -= 1;
        }
        self.state = after;
        self.placed_determinate += usize::from(op.determinate);
        self.events.lift(op);
        self.config.toggle(i, op);
        let constraint = self.constraint();
        self.config.set_word(self.state, constraint);
        if self.failed.dominates(&self.config) {
            self.retract();
            return false;
        }
        true
    }

    /// Undoes the last placement, recording that the configuration it left has no completion.
    /// Returns the undone frame, or `None` when nothing is placed.
    fn undo(&mut self) -> Option<Frame> {
        if self.stack.is_empty() {
            return None;
        }
        self.failed.insert(&self.config);
        Some(self.retract())
    }

    /// Undoes the last placement exactly (the values on the stack are the values as they were).
    fn retract(&mut self) -> Frame {
        let frame = self.stack.pop().expect("something is placed");
        let op = &self.ops[frame.op];
        if let Some(v) = op.observes {
            self.observers[v as usize] += 1;
        }
        self.state = frame.before;
        self.placed_determinate -= usize::from(op.determinate);
        self.events.unlift(op);
        self.config.toggle(frame.op, op);
        let constraint = self.constraint();
        self.config.set_word(self.state, constraint);
        frame
    }
}

/// The Wing & Gong / Lowe search for one key. Sound and complete within the budget: `Linearizable` is
/// returned only with a linearization of all determinate operations in hand (the indeterminate rest go
/// after it), `Violation` only after the search space was exhausted: every pruning rule skips only
/// configurations that provably have no completion, or that are interchangeable with one that is
/// explored (see `UNOBSERVED`, `Failed`, `Search::canonical`, `Search::constraint`,
/// `Search::try_step` and `Search::first_entry`).
fn check_key<'a>(history: &[&'a Operation], budget: u64) -> KeyVerdict {
    let n = history.len();
    // Observed values get ids from 2 on, in order of appearance.
    let mut ids: HashMap<&'a str, u32> = HashMap::new();
    for op in history {
        let observed = match (&op.kind, &op.output) {
            (Kind::Get, Some(Output::Value(Some(v)))) => v,
            (
                Kind::Cas {
                    expected: Some(v), ..
                },
                _,
            ) => v,
            _ => continue,
        };
        let next = u32::try_from(ids.len() + 2).expect("fewer than 2^32 distinct values");
        ids.entry(observed.as_str()).or_insert(next);
    }
    let intern = |v: Option<&String>| match v {
        None => ABSENT,
        Some(s) => ids.get(s.as_str()).copied().unwrap_or(UNOBSERVED),
    };
    let mut ops: Vec<Op> = history
        .iter()
        .map(|op| {
            let step = match (&op.kind, &op.output) {
                (Kind::Put(v), _) => Step::Write(intern(Some(v))),
                (Kind::Delete, _) => Step::Write(ABSENT),
                (Kind::Get, Some(Output::Value(v))) => Step::Read(intern(v.as_ref())),
                (Kind::Cas { expected, new }, output) => Step::Cas {
                    expected: intern(expected.as_ref()),
                    new: intern(Some(new)),
                    swapped: match output {
                        Some(Output::Swapped(s)) => Some(*s),
                        _ => None,
                    },
                },
                // `check` dropped indeterminate gets and validated the shapes.
                (Kind::Get, _) => unreachable!("indeterminate or malformed get"),
            };
            let determinate = !op.is_indeterminate();
            Op {
                step,
                determinate,
                read_only: matches!(
                    step,
                    Step::Read(_)
                        | Step::Cas {
                            swapped: Some(false),
                            ..
                        }
                ),
                observes: match step {
                    Step::Write(_) => None,
                    Step::Read(v) | Step::Cas { expected: v, .. } => Some(v),
                },
                slot: 0,
                call: 0,
                ret: 0,
            }
        })
        .collect();
    let determinate = ops.iter().filter(|op| op.determinate).count();
    let indeterminate = n - determinate;
    if determinate == 0 {
        return KeyVerdict::Linearizable;
    }

    // Events sorted by (time, return after call): an operation called at the instant another returns
    // counts as concurrent with it. Indeterminate operations return at +infinity, after every finite
    // return (the stable sort keeps them after a finite return at u64::MAX too).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        order.push((op.call, false, i));
        let ret = if op.is_indeterminate() {
            u64::MAX
        } else {
            op.ret.expect("validated")
        };
        order.push((ret, true, i));
    }
    order.sort_by_key(|&(time, is_return, _)| (time, is_return));
    // Nodes: HEAD, the events at 1..=2n in sorted order, the tail at 2n + 1 (its own next).
    let tail = 2 * n + 1;
    let mut events = Events {
        next: (1..=tail).chain([tail]).collect(),
        prev: [HEAD].into_iter().chain(0..tail).collect(),
        op: vec![0; tail + 1],
        is_call: vec![false; tail + 1],
    };
    // Bit numbers in call order, separately for determinate and indeterminate operations.
    let mut slots = [0usize; 2];
    for (pos, &(_, is_return, i)) in order.iter().enumerate() {
        let node = pos + 1;
        events.op[node] = i;
        events.is_call[node] = !is_return;
        if is_return {
            ops[i].ret = node;
        } else {
            ops[i].call = node;
            let slot = &mut slots[usize::from(ops[i].determinate)];
            ops[i].slot = *slot;
            *slot += 1;
        }
    }

    let mut observers = vec![0u32; ids.len() + 2];
    for op in &ops {
        if let Some(v) = op.observes {
            observers[v as usize] += 1;
        }
    }
    let mut search = Search {
        ops,
        events,
        config: Config {
            det: vec![0; determinate.div_ceil(64)],
            word: 0,
            indet: vec![0; indeterminate.div_ceil(64)],
            placed_hash: 0,
        },
        failed: Failed::default(),
        stack: Vec::new(),
        state: ABSENT,
        placed_determinate: 0,
        determinate,
        observers,
    };
    search.state = search.canonical(ABSENT, None);
    search.config.set_word(search.state, None);
    // For the report: the placed operations at the dead end with the most determinate ones placed,
    // without trailing indeterminate ones (they explain nothing there), and how many that was.
    let mut best: Vec<usize> = Vec::new();
    let mut best_determinate = 0;
    let (mut entry, mut spent) = search.first_entry();
    loop {
        // Every determinate operation is placed; the indeterminate rest can follow in any order.
        if search.placed_determinate == search.determinate {
            return KeyVerdict::Linearizable;
        }
        spent += 1;
        if spent > budget {
            return KeyVerdict::Unknown;
        }
        // `entry` is never the tail: from a call the list still holds its return further on, and after
        // an undo `entry` is the node after a call that was just put back (again followed by its return).
        let i = search.events.op[entry];
        let dead_end = if !search.events.is_call[entry] {
            // The earliest remaining return, of an operation not placed yet: no later call is a
            // candidate, and every candidate was tried.
            true
        } else if let Some(after) = search.try_step(i, search.constraint()) {
            if search.place(i, after) {
                let scanned;
                (entry, scanned) = search.first_entry();
                spent += scanned;
                continue;
            }
            entry = search.events.next[entry];
            // Placing `i` here cannot succeed; for a read-only `i` that proves this configuration
            // cannot either (see `Search::first_entry`).
            search.ops[i].read_only
        } else {
            entry = search.events.next[entry];
            false
        };
        if dead_end {
            if search.placed_determinate > best_determinate {
                best_determinate = search.placed_determinate;
                best = search.stack.iter().map(|frame| frame.op).collect();
                while best.last().is_some_and(|&i| !search.ops[i].determinate) {
                    best.pop();
                }
            }
            // Undo the last choice; an eagerly placed read-only operation was no choice (the
            // configuration before it fails whenever the one after it does), so keep undoing.
            loop {
                let Some(frame) = search.undo() else {
                    return KeyVerdict::Violation(explain(history, &best, spent));
                };
                if !frame.eager {
                    entry = search.events.next[search.ops[frame.op].call];
                    break;
                }
            }
        }
    }
}

/// How many operations of the prefix and of the candidates a violation report shows at most.
const SHOW: usize = 20;

/// The model on real values: the value after `op` from `value`, if `op`'s recorded output (any output,
/// if indeterminate) is consistent with `value`.
fn model_step(op: &Operation, value: &Option<String>) -> Option<Option<String>> {
    match (&op.kind, &op.output) {
        (Kind::Put(v), _) => Some(Some(v.clone())),
        (Kind::Delete, _) => Some(None),
        (Kind::Get, Some(output)) => {
            (*output == Output::Value(value.clone())).then(|| value.clone())
        }
        (Kind::Get, None) => Some(value.clone()),
        (Kind::Cas { expected, new }, output) => {
            let hit = value == expected;
            match output {
                Some(output) if *output != Output::Swapped(hit) => None,
                _ => Some(if hit {
                    Some(new.clone())
                } else {
                    value.clone()
                }),
            }
        }
    }
}

/// A human-readable account of a violation: the longest linearizable prefix the search found, the
/// value after it, and the operations that could have come next, each with why it does not.
fn explain(ops: &[&Operation], best: &[usize], spent: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let indeterminate = ops.iter().filter(|op| op.is_indeterminate()).count();
    let _ = writeln!(
        out,
        "no linearization of the {} operations on this key exists ({indeterminate} of them \
         indeterminate; {spent} search steps).",
        ops.len()
    );
    let shown = if best.len() > SHOW {
        format!(" (the last {SHOW} shown)")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "longest linearizable prefix found: {} operations{shown}",
        best.len()
    );
    // Replaying the prefix on real values is consistent: the search merged only values that no
    // operation of the rest compares with.
    let mut value = None;
    for (pos, &i) in best.iter().enumerate() {
        value = model_step(ops[i], &value).unwrap_or(value);
        if pos + SHOW >= best.len() {
            let _ = writeln!(out, "  {:>6}. {}", pos + 1, ops[i]);
        }
    }
    let value_text = show_value(&value);
    let _ = writeln!(out, "value after the prefix: {value_text}");

    let mut placed = vec![false; ops.len()];
    for &i in best {
        placed[i] = true;
    }
    let rest: Vec<usize> = (0..ops.len()).filter(|&i| !placed[i]).collect();
    let stuck = rest.iter().filter(|&&i| !ops[i].is_indeterminate()).count();
    // Only operations called by the earliest return among the unplaced determinate ones can come next
    // (a call at the instant of that return counts as concurrent with it).
    let deadline = rest
        .iter()
        .filter_map(|&i| ops[i].output.as_ref().and(ops[i].ret))
        .min();
    let candidates: Vec<usize> = rest
        .iter()
        .copied()
        .filter(|&i| deadline.is_none_or(|t| ops[i].call <= t))
        .collect();
    let _ = writeln!(
        out,
        "{stuck} determinate operation(s) could not be placed after it; the next operation would have \
         to be one of these{}:",
        deadline.map_or(String::new(), |t| format!(" (called by t={t})"))
    );
    for &i in candidates.iter().take(SHOW) {
        let why = match model_step(ops[i], &value) {
            None => format!("inconsistent with the value {value_text}"),
            Some(_) => "consistent here, but nothing after it linearizes".to_string(),
        };
        let _ = writeln!(out, "  {}\n        -> {why}", ops[i]);
    }
    if candidates.len() > SHOW {
        let _ = writeln!(out, "  ... and {} more", candidates.len() - SHOW);
    }
    out
}
