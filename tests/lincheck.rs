//! Tests of the linearizability checker in `common/lincheck.rs`: hand-written histories with a known
//! answer, the recorder, randomized histories of a simulated linearizable register (which must pass)
//! with one read corrupted so that they must fail, a performance check, and a comparison with an
//! independent exhaustive search on many small random histories.

#[path = "common/lincheck.rs"]
mod lincheck;

use lincheck::{check, Kind, Operation, Output, Recorder, Verdict, DEFAULT_BUDGET};
use std::time::Instant;

fn put(client: u64, key: &str, value: &str, call: u64, ret: u64) -> Operation {
    Operation::completed(
        client,
        key,
        Kind::Put(value.to_string()),
        call,
        ret,
        Output::Ok,
    )
}

fn get(client: u64, key: &str, seen: Option<&str>, call: u64, ret: u64) -> Operation {
    let output = Output::Value(seen.map(str::to_string));
    Operation::completed(client, key, Kind::Get, call, ret, output)
}

fn cas(
    client: u64,
    key: &str,
    expected: Option<&str>,
    new: &str,
    span: (u64, u64),
    swapped: bool,
) -> Operation {
    let kind = Kind::Cas {
        expected: expected.map(str::to_string),
        new: new.to_string(),
    };
    Operation::completed(client, key, kind, span.0, span.1, Output::Swapped(swapped))
}

fn delete(client: u64, key: &str, call: u64, ret: u64) -> Operation {
    Operation::completed(client, key, Kind::Delete, call, ret, Output::Ok)
}

/// Asserts a violation on `key` and returns its detail.
#[track_caller]
fn expect_violation(ops: &[Operation], key: &str) -> String {
    match check(ops, DEFAULT_BUDGET) {
        Verdict::Violation { key: k, detail } => {
            assert_eq!(k, key, "violation reported on the wrong key:\n{detail}");
            detail
        }
        other => panic!("expected a violation on {key:?}, got: {other}"),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    let ops = vec![
        get(1, "k", None, 0, 10),
        put(1, "k", "a", 20, 30),
        get(2, "k", Some("a"), 40, 50),
        cas(1, "k", Some("a"), "b", (60, 70), true),
        cas(2, "k", Some("a"), "c", (80, 90), false),
        get(1, "k", Some("b"), 100, 110),
        delete(2, "k", 120, 130),
        get(1, "k", None, 140, 150),
        cas(2, "k", None, "d", (160, 170), true),
        get(1, "k", Some("d"), 180, 190),
    ];
    check(&ops, DEFAULT_BUDGET).assert_linearizable();
    // The same history with one output changed must fail, so the pass above is not vacuous.
    let mut broken = ops;
    broken[5] = get(1, "k", Some("c"), 100, 110);
    expect_violation(&broken, "k");
}

#[test]
fn overlapping_get_may_see_either_value() {
    for seen in [Some("old"), Some("new")] {
        let ops = vec![
            put(1, "k", "old", 0, 10),
            put(1, "k", "new", 20, 60),
            get(2, "k", seen, 30, 40), // Inside the put's interval.
            get(2, "k", Some("new"), 70, 80),
        ];
        check(&ops, DEFAULT_BUDGET).assert_linearizable();
    }
}

#[test]
fn return_and_call_at_the_same_instant_are_concurrent() {
    // The put returns at 10 and the get is called at 10: no order is proved, so the old value is allowed.
    let ops = vec![
        put(1, "k", "a", 0, 5),
        put(1, "k", "b", 6, 10),
        get(2, "k", Some("a"), 10, 20),
    ];
    check(&ops, DEFAULT_BUDGET).assert_linearizable();
    // One nanosecond later the order is proved and the old value is stale.
    let ops = vec![
        put(1, "k", "a", 0, 5),
        put(1, "k", "b", 6, 10),
        get(2, "k", Some("a"), 11, 20),
    ];
    expect_violation(&ops, "k");
}

#[test]
fn stale_read_is_a_violation() {
    let ops = vec![
        put(1, "k", "v1", 0, 10),
        put(1, "k", "v2", 20, 30),
        get(2, "k", Some("v1"), 40, 50), // Called after v2 was acknowledged.
    ];
    let detail = expect_violation(&ops, "k");
    // The report names the read that cannot be placed and the value it should have seen.
    assert!(
        detail.contains("[client 2] get -> \"v1\"  @[40, 50]"),
        "{detail}"
    );
    assert!(
        detail.contains("value after the prefix: \"v2\""),
        "{detail}"
    );
}

#[test]
fn lost_acknowledged_write_is_a_violation() {
    let ops = vec![
        put(1, "k", "v1", 0, 10),
        put(2, "k", "v2", 20, 30), // Acknowledged, then lost.
        get(3, "k", Some("v1"), 40, 50),
        get(1, "k", Some("v1"), 60, 70),
        get(2, "k", Some("v1"), 80, 90),
    ];
    expect_violation(&ops, "k");
}

#[test]
fn two_concurrent_cas_from_the_same_value() {
    let base = vec![put(1, "k", "a", 0, 10)];
    // Both succeed: the second one cannot have seen "a" any more.
    let mut both = base.clone();
    both.push(cas(2, "k", Some("a"), "b", (20, 40), true));
    both.push(cas(3, "k", Some("a"), "c", (25, 45), true));
    expect_violation(&both, "k");
    // One succeeds and one fails: fine, whichever order the later read implies.
    for (winner, value) in [(2, "b"), (3, "c")] {
        let mut one = base.clone();
        one.push(cas(2, "k", Some("a"), "b", (20, 40), winner == 2));
        one.push(cas(3, "k", Some("a"), "c", (25, 45), winner == 3));
        one.push(get(1, "k", Some(value), 50, 60));
        check(&one, DEFAULT_BUDGET).assert_linearizable();
    }
    // Both fail although "a" was there and nothing else wrote: a violation too.
    let mut none = base;
    none.push(cas(2, "k", Some("a"), "b", (20, 40), false));
    none.push(cas(3, "k", Some("a"), "c", (25, 45), false));
    expect_violation(&none, "k");
}

#[test]
fn indeterminate_put_may_or_may_not_take_effect() {
    let lost = Operation::indeterminate(2, "k", Kind::Put("v2".to_string()), 20);
    // Observed much later (it may take effect at any time after its call).
    let observed = vec![
        put(1, "k", "v1", 0, 10),
        lost.clone(),
        get(3, "k", Some("v1"), 1_000, 1_010),
        get(3, "k", Some("v2"), 2_000, 2_010),
        get(1, "k", Some("v2"), 3_000, 3_010),
    ];
    check(&observed, DEFAULT_BUDGET).assert_linearizable();
    // Never observed.
    let unobserved = vec![
        put(1, "k", "v1", 0, 10),
        lost.clone(),
        get(3, "k", Some("v1"), 1_000, 1_010),
        get(3, "k", Some("v1"), 2_000, 2_010),
    ];
    check(&unobserved, DEFAULT_BUDGET).assert_linearizable();
    // But it takes effect at most once: seen, then gone again without another write, is a violation.
    let flapping = vec![
        put(1, "k", "v1", 0, 10),
        lost,
        get(3, "k", Some("v2"), 1_000, 1_010),
        get(3, "k", Some("v1"), 2_000, 2_010),
    ];
    expect_violation(&flapping, "k");
    // Nor can it take effect before its call.
    let early = vec![
        get(3, "k", Some("v2"), 0, 10),
        Operation::indeterminate(2, "k", Kind::Put("v2".to_string()), 20),
    ];
    expect_violation(&early, "k");
}

#[test]
fn indeterminate_get_and_cas_are_accepted() {
    let ops = vec![
        put(1, "k", "a", 0, 10),
        Operation::indeterminate(2, "k", Kind::Get, 20),
        Operation::indeterminate(
            3,
            "k",
            Kind::Cas {
                expected: Some("a".into()),
                new: "b".into(),
            },
            30,
        ),
        get(1, "k", Some("b"), 100, 110),
    ];
    check(&ops, DEFAULT_BUDGET).assert_linearizable();
    // An indeterminate cas cannot swap when its expected value is not there.
    let mut wrong = ops;
    wrong[2] = Operation::indeterminate(
        3,
        "k",
        Kind::Cas {
            expected: Some("x".into()),
            new: "b".into(),
        },
        30,
    );
    expect_violation(&wrong, "k");
}

#[test]
fn serializable_read_from_a_partitioned_minority_is_a_violation() {
    // Client A writes v2 through the majority (acknowledged); client B then reads v1 from a minority
    // member that has not heard of it (a serializable, non-quorum read).
    let ops = vec![
        put(0, "k", "v1", 0, 100),
        get(2, "k", Some("v1"), 150, 200), // B before the partition: fine.
        put(1, "k", "v2", 300, 400),       // A, on the majority.
        get(2, "k", Some("v1"), 500, 520), // B, on the minority, after A's ack.
    ];
    let detail = expect_violation(&ops, "k");
    assert!(
        detail.contains("[client 2] get -> \"v1\"  @[500, 520]"),
        "{detail}"
    );
    // Had B's read overlapped A's write, it would have been fine.
    let mut overlapping = ops;
    overlapping[3] = get(2, "k", Some("v1"), 350, 520);
    check(&overlapping, DEFAULT_BUDGET).assert_linearizable();
}

#[test]
fn violation_names_the_key() {
    let ops = vec![
        put(1, "a", "x", 0, 10),
        put(1, "b", "x", 0, 10),
        put(1, "c", "x", 0, 10),
        get(2, "a", Some("x"), 20, 30),
        put(2, "b", "y", 20, 30),
        get(2, "c", Some("x"), 20, 30),
        get(3, "b", Some("x"), 40, 50), // Stale, on "b" only.
        get(3, "a", Some("x"), 40, 50),
        get(3, "c", Some("x"), 40, 50),
    ];
    expect_violation(&ops, "b");
    // Keys are independent registers: the same value on another key does not help "b".
    let fixed: Vec<Operation> = ops
        .into_iter()
        .filter(|op| !(op.key == "b" && op.client == 3))
        .collect();
    check(&fixed, DEFAULT_BUDGET).assert_linearizable();
}

#[test]
fn exhausted_budget_is_unknown_not_a_pass() {
    let ops = random_history(7, 8, 200, "k", 0);
    assert_eq!(check(&ops, DEFAULT_BUDGET), Verdict::Linearizable);
    assert_eq!(
        check(&ops, 10),
        Verdict::Unknown {
            key: "k".to_string()
        }
    );
}

#[test]
#[should_panic(expected = "linearizability UNKNOWN on key \"k\"")]
fn assert_linearizable_fails_on_unknown() {
    check(&random_history(7, 8, 200, "k", 0), 10).assert_linearizable();
}

#[test]
fn recorder_records_from_threads_and_drop_is_indeterminate() {
    let recorder = Recorder::new();
    let threads: Vec<_> = (0..4u64)
        .map(|client| {
            let recorder = recorder.clone();
            std::thread::spawn(move || {
                let key = format!("k{client}");
                for i in 0..50 {
                    let value = format!("{client}-{i}");
                    recorder
                        .call(client, key.as_str(), Kind::Put(value.clone()))
                        .ok(Output::Ok);
                    recorder
                        .call(client, key.as_str(), Kind::Get)
                        .ok(Output::Value(Some(value)));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let pending = recorder.call(9, "k0", Kind::Put("maybe".to_string()));
    drop(pending);
    recorder.call(9, "k0", Kind::Delete).unknown();
    let ops = recorder.operations();
    assert_eq!(ops.len(), 4 * 100 + 2);
    assert_eq!(ops.iter().filter(|op| op.is_indeterminate()).count(), 2);
    assert!(ops.iter().all(|op| op.ret.is_none_or(|ret| ret >= op.call)));
    recorder.check(DEFAULT_BUDGET).assert_linearizable();
    // A read recorded now of a value that was never written must fail.
    recorder
        .call(9, "k1", Kind::Get)
        .ok(Output::Value(Some("never".to_string())));
    assert!(
        matches!(recorder.check(DEFAULT_BUDGET), Verdict::Violation { key, .. } if key == "k1")
    );
}

/// xorshift64*: a small deterministic PRNG, so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for tests.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A history of a real linearizable register: `clients` clients issue `total` operations on `key`, each
/// with a random interval (overlapping the other clients') and a random linearization point inside it.
/// Outputs come from applying the operations to one register in linearization-point order, so the
/// history is linearizable by construction. Every written value is unique ("v<index>").
/// `indeterminate_per_mille` operations lose their outcome; such a write takes effect or not at random.
fn random_history(
    seed: u64,
    clients: u64,
    total: usize,
    key: &str,
    indeterminate_per_mille: u64,
) -> Vec<Operation> {
    let mut rng = Rng::new(seed);
    let mut free_at: Vec<u64> = (0..clients).map(|_| rng.below(50)).collect();
    let mut ops = Vec::with_capacity(total);
    let mut linearize_at = Vec::with_capacity(total);
    let mut written: Vec<String> = Vec::new();
    for i in 0..total {
        let client = i as u64 % clients;
        let call = free_at[client as usize] + rng.below(30);
        let ret = call + 1 + rng.below(200);
        linearize_at.push(call + rng.below(ret - call + 1));
        free_at[client as usize] = ret + 1;
        let value = format!("v{i}");
        let kind = match rng.below(100) {
            0..=44 => Kind::Get,
            45..=79 => Kind::Put(value.clone()),
            80..=94 => {
                // Expect a recent value (or absence), so that some swaps succeed and some do not.
                let back = rng.below(4) as usize;
                let expected = written
                    .len()
                    .checked_sub(back + 1)
                    .map(|j| written[j].clone());
                Kind::Cas {
                    expected,
                    new: value.clone(),
                }
            }
            _ => Kind::Delete,
        };
        if !matches!(kind, Kind::Get | Kind::Delete) {
            written.push(value);
        }
        ops.push(Operation::completed(
            client,
            key,
            kind,
            call,
            ret,
            Output::Ok,
        ));
    }
    let mut order: Vec<usize> = (0..total).collect();
    order.sort_by_key(|&i| (linearize_at[i], i));
    let mut register: Option<String> = None;
    for i in order {
        let op = &mut ops[i];
        let lost = rng.below(1000) < indeterminate_per_mille;
        if lost && rng.below(2) == 0 {
            // Never took effect.
            op.ret = None;
            op.output = None;
            continue;
        }
        let output = match &op.kind {
            Kind::Put(v) => {
                register = Some(v.clone());
                Output::Ok
            }
            Kind::Get => Output::Value(register.clone()),
            Kind::Cas { expected, new } => {
                let hit = register == *expected;
                if hit {
                    register = Some(new.clone());
                }
                Output::Swapped(hit)
            }
            Kind::Delete => {
                register = None;
                Output::Ok
            }
        };
        if lost {
            // Took effect, but the client never learned it.
            op.ret = None;
            op.output = None;
        } else {
            op.output = Some(output);
        }
    }
    ops
}

#[test]
fn random_linearizable_histories_pass() {
    for seed in 1..=4 {
        let ops = random_history(seed, 8, 1_000, "k", 0);
        let verdict = check(&ops, DEFAULT_BUDGET);
        assert_eq!(verdict, Verdict::Linearizable, "seed {seed}: {verdict}");
        let ops = random_history(seed, 8, 1_000, "k", 10);
        assert!(ops.iter().any(Operation::is_indeterminate));
        let verdict = check(&ops, DEFAULT_BUDGET);
        assert_eq!(
            verdict,
            Verdict::Linearizable,
            "seed {seed} with indeterminate operations: {verdict}"
        );
    }
}

/// The index of the first determinate get at or after `from`.
fn first_get_from(ops: &[Operation], from: usize) -> usize {
    (from..ops.len())
        .find(|&i| ops[i].kind == Kind::Get && !ops[i].is_indeterminate())
        .expect("the generator makes plenty of gets")
}

#[test]
fn random_history_with_a_read_of_a_never_written_value_fails() {
    for seed in 1..=4 {
        let mut ops = random_history(seed, 8, 1_000, "k", 10);
        let victim = first_get_from(&ops, 500);
        ops[victim].output = Some(Output::Value(Some("never-written".to_string())));
        let detail = expect_violation(&ops, "k");
        assert!(
            detail.contains("get -> \"never-written\""),
            "seed {seed}:\n{detail}"
        );
    }
}

#[test]
fn random_history_with_a_stale_read_fails() {
    for seed in 1..=4 {
        let mut ops = random_history(seed, 8, 1_000, "k", 0);
        // A put P of w, then a write X that starts after P returned, then a get G that starts after X
        // returned. Every value is written once, so G cannot see w: X overwrote it for good.
        let done = |i: usize| ops[i].ret.expect("no indeterminate operations");
        let p = (0..ops.len())
            .find(|&i| matches!(ops[i].kind, Kind::Put(_)))
            .unwrap();
        let x = (p + 1..ops.len())
            .find(|&i| matches!(ops[i].kind, Kind::Put(_) | Kind::Delete) && ops[i].call > done(p))
            .unwrap();
        let g = (x + 1..ops.len())
            .find(|&i| ops[i].kind == Kind::Get && ops[i].call > done(x))
            .unwrap();
        let Kind::Put(w) = ops[p].kind.clone() else {
            unreachable!()
        };
        assert_ne!(
            ops[g].output,
            Some(Output::Value(Some(w.clone()))),
            "the generator is not linearizable"
        );
        ops[g].output = Some(Output::Value(Some(w)));
        expect_violation(&ops, "k");
    }
}

#[test]
fn performance_3000_ops_10_clients_one_key() {
    let ops = random_history(42, 10, 3_000, "k", 0);
    let started = Instant::now();
    let verdict = check(&ops, DEFAULT_BUDGET);
    let elapsed = started.elapsed();
    eprintln!("lincheck: 3,000 operations, 10 clients, one key: {verdict} in {elapsed:?}");
    assert_eq!(verdict, Verdict::Linearizable, "{verdict}");

    let ops = random_history(43, 10, 3_000, "k", 5);
    let started = Instant::now();
    let verdict = check(&ops, DEFAULT_BUDGET);
    let elapsed = started.elapsed();
    eprintln!("lincheck: same, 0.5% indeterminate: {verdict} in {elapsed:?}");
    assert_eq!(verdict, Verdict::Linearizable, "{verdict}");
}

/// The model, on real values: the value after `op` from `state`, if `op`'s recorded output (any, if
/// indeterminate) is consistent with `state`.
fn model_step(op: &Operation, state: &Option<String>) -> Option<Option<String>> {
    match (&op.kind, &op.output) {
        (Kind::Put(v), _) => Some(Some(v.clone())),
        (Kind::Delete, _) => Some(None),
        (Kind::Get, None) => Some(state.clone()),
        (Kind::Get, Some(output)) => {
            (*output == Output::Value(state.clone())).then(|| state.clone())
        }
        (Kind::Cas { expected, new }, output) => {
            let hit = state == expected;
            if output
                .as_ref()
                .is_some_and(|output| *output != Output::Swapped(hit))
            {
                return None;
            }
            Some(if hit {
                Some(new.clone())
            } else {
                state.clone()
            })
        }
    }
}

/// An independent, exhaustive oracle for one key: tries every order (and, for indeterminate operations,
/// whether they take effect at all) that respects real time, remembering only which (placed set, value)
/// pairs failed. Exponential; small histories only.
fn brute_force(ops: &[Operation]) -> bool {
    fn search(
        ops: &[Operation],
        placed: u32,
        state: &Option<String>,
        failed: &mut std::collections::HashSet<(u32, Option<String>)>,
    ) -> bool {
        let is_placed = |j: usize| placed & (1 << j) != 0;
        if (0..ops.len()).all(|j| is_placed(j) || ops[j].is_indeterminate()) {
            return true;
        }
        if failed.contains(&(placed, state.clone())) {
            return false;
        }
        for i in (0..ops.len()).filter(|&i| !is_placed(i)) {
            // `i` can come next unless an unplaced determinate operation returned before it was called.
            let blocked = (0..ops.len()).any(|j| {
                !is_placed(j) && !ops[j].is_indeterminate() && ops[j].ret.unwrap() < ops[i].call
            });
            if blocked {
                continue;
            }
            if let Some(next) = model_step(&ops[i], state) {
                if search(ops, placed | (1 << i), &next, failed) {
                    return true;
                }
            }
        }
        failed.insert((placed, state.clone()));
        false
    }
    search(ops, 0, &None, &mut Default::default())
}

/// A small random history on one key, over a tiny value domain and a tiny time range (so that values
/// repeat and timestamps tie), with outputs either from a simulated register or random.
fn small_random_history(rng: &mut Rng) -> Vec<Operation> {
    let values = ["a", "b", "c"];
    let n = 1 + rng.below(12) as usize;
    let simulate = rng.below(2) == 0;
    let value = |rng: &mut Rng| values[rng.below(3) as usize].to_string();
    let maybe_value =
        |rng: &mut Rng| (rng.below(4) != 0).then(|| values[rng.below(3) as usize].to_string());
    let mut ops = Vec::new();
    let mut linearize_at = Vec::new();
    for i in 0..n {
        let call = rng.below(20);
        let ret = call + rng.below(8);
        linearize_at.push((call + rng.below(ret - call + 1), i));
        let kind = match rng.below(4) {
            0 => Kind::Put(value(rng)),
            1 => Kind::Get,
            2 => Kind::Cas {
                expected: maybe_value(rng),
                new: value(rng),
            },
            _ => Kind::Delete,
        };
        let output = match &kind {
            Kind::Put(_) | Kind::Delete => Output::Ok,
            Kind::Get => Output::Value(maybe_value(rng)),
            Kind::Cas { .. } => Output::Swapped(rng.below(2) == 0),
        };
        ops.push(Operation::completed(
            rng.below(4),
            "k",
            kind,
            call,
            ret,
            output,
        ));
    }
    if simulate {
        linearize_at.sort();
        let mut state = None;
        for (_, i) in linearize_at {
            let op = &mut ops[i];
            let output = match &op.kind {
                Kind::Put(_) | Kind::Delete => Output::Ok,
                Kind::Get => Output::Value(state.clone()),
                Kind::Cas { expected, .. } => Output::Swapped(state == *expected),
            };
            op.output = Some(output);
            state = model_step(op, &state).unwrap();
        }
        // One random output change, half of the time, to land near the boundary.
        if rng.below(2) == 0 {
            let op = &mut ops[rng.below(n as u64) as usize];
            op.output = match &op.kind {
                Kind::Get => Some(Output::Value(maybe_value(rng))),
                Kind::Cas { .. } => Some(Output::Swapped(rng.below(2) == 0)),
                _ => op.output.clone(),
            };
        }
    }
    let indeterminate_per_8 = rng.below(5);
    for op in &mut ops {
        if rng.below(8) < indeterminate_per_8 {
            op.ret = None;
            op.output = None;
        }
    }
    ops
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    // LINCHECK_FUZZ_ROUNDS=1000000 for a longer run.
    let rounds: u64 = std::env::var("LINCHECK_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    let mut rng = Rng::new(2024);
    let (mut linearizable, mut violations) = (0, 0);
    for round in 0..rounds {
        let ops = small_random_history(&mut rng);
        let expected = brute_force(&ops);
        let verdict = check(&ops, DEFAULT_BUDGET);
        assert!(
            !matches!(verdict, Verdict::Unknown { .. }),
            "round {round}: {verdict}"
        );
        if expected != (verdict == Verdict::Linearizable) {
            let listing: Vec<String> = ops.iter().map(|op| format!("  {op}")).collect();
            panic!(
                "round {round}: brute force says {expected}, checker says {verdict}\n{}",
                listing.join("\n")
            );
        }
        if expected {
            linearizable += 1;
        } else {
            violations += 1;
        }
    }
    // Both verdicts must be well represented, or the comparison proves little.
    assert!(
        linearizable > rounds / 5 && violations > rounds / 5,
        "{linearizable} vs {violations}"
    );
}
