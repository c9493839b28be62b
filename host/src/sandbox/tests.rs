//! Sandbox tests: every kind of misbehaving machine becomes a deterministic
//! outcome with its writes rolled back, and bad modules are refused by name.

use super::*;
use std::collections::BTreeMap;

type Mem = BTreeMap<Vec<u8>, Vec<u8>>;

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxLimits {
        fuel_per_call: 50_000_000,
        memory_bytes_max: 16 << 20,
        ..SandboxLimits::default()
    })
    .unwrap()
}

fn load(sb: &Sandbox, wasm: &[u8]) -> LoadedMachine {
    let component = Sandbox::normalize(wasm).unwrap();
    unsafe { sb.load(&component, None) }.unwrap()
}

fn ctx(index: u64) -> CallContext {
    CallContext {
        index,
        term: 1,
        entry: EntryContext {
            timestamp_ms: 1_700_000_000_000 + index,
            seed: 42,
        },
    }
}

fn cbor(json: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    crate::codec::to_cbor(&v)
}

fn apply(sb: &Sandbox, m: &LoadedMachine, state: &mut Mem, index: u64, json: &str) -> Outcome {
    let call = sb
        .apply(m, "t", std::mem::take(state), ctx(index), &cbor(json))
        .unwrap();
    *state = call.view;
    for (k, v) in call.writes {
        match v {
            Some(v) => state.insert(k, v),
            None => state.remove(&k),
        };
    }
    call.outcome
}

#[test]
fn kv_example_puts_and_reads_back() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::KV);
    let mut state = Mem::new();
    let out = apply(&sb, &m, &mut state, 1, r#"{"put":{"key":"a","value":"1"}}"#);
    assert!(out.is_ok(), "{out:?}");
    let q = sb
        .query(&m, "t", state, &cbor(r#"{"get":{"key":"a"}}"#))
        .unwrap();
    let Outcome::Ok(bytes) = q.outcome else {
        panic!("{:?}", q.outcome)
    };
    let v: Option<String> = serde_cbor::from_slice(&bytes).unwrap();
    assert_eq!(v.as_deref(), Some("1"));
}

#[test]
fn infinite_loop_runs_out_of_fuel_and_writes_nothing() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let mut state = Mem::new();
    let out = apply(&sb, &m, &mut state, 1, r#"{"loop":{"key":"x"}}"#);
    assert_eq!(out, Outcome::OutOfFuel);
    assert!(state.is_empty(), "rolled back");
}

#[test]
fn unbounded_allocation_hits_the_memory_limit_and_writes_nothing() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let mut state = Mem::new();
    let out = apply(&sb, &m, &mut state, 1, r#"{"alloc":{"key":"x","mib":64}}"#);
    assert_eq!(out, Outcome::MemoryLimit);
    assert!(state.is_empty());
    // A small allocation in the next call works: the instance was fresh.
    let out = apply(&sb, &m, &mut state, 2, r#"{"alloc":{"key":"x","mib":2}}"#);
    assert!(out.is_ok(), "{out:?}");
}

#[test]
fn panic_is_a_trap_outcome_and_writes_nothing() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let mut state = Mem::new();
    let out = apply(&sb, &m, &mut state, 1, r#"{"panic":{"key":"x"}}"#);
    assert!(matches!(out, Outcome::Trapped { .. }), "{out:?}");
    assert!(state.is_empty());
}

#[test]
fn refusal_rolls_back_the_commands_writes() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let mut state = Mem::new();
    let out = apply(&sb, &m, &mut state, 1, r#"{"refuse":{"key":"x"}}"#);
    assert!(
        matches!(out, Outcome::Refused { ref code, .. } if code == "refused"),
        "{out:?}"
    );
    assert!(state.is_empty());
    assert!(apply(&sb, &m, &mut state, 2, r#"{"write":{"key":"x"}}"#).is_ok());
    assert_eq!(state.len(), 1);
}

#[test]
fn query_that_writes_traps() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let q = sb
        .query(&m, "t", Mem::new(), &cbor(r#"{"write":{"key":"x"}}"#))
        .unwrap();
    assert_eq!(
        q.outcome,
        Outcome::Trapped {
            trap: "write-in-query".into()
        }
    );
    assert!(q.writes.is_empty());
}

#[test]
fn outcomes_and_fuel_are_deterministic() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let run = || {
        let c = sb
            .apply(&m, "t", Mem::new(), ctx(7), &cbor(r#""entropy""#))
            .unwrap();
        (c.outcome, c.fuel_used)
    };
    let (a, fa) = run();
    let (b, fb) = run();
    assert_eq!(a, b);
    assert_eq!(fa, fb);
    let Outcome::Ok(bytes) = a else {
        panic!("{a:?}")
    };
    let (now, _random): (u64, u64) = serde_cbor::from_slice(&bytes).unwrap();
    assert_eq!(now, ctx(7).entry.timestamp_ms, "now() comes from the entry");
}

#[test]
fn bad_modules_are_refused_with_a_clear_error() {
    assert!(matches!(
        Sandbox::normalize(b"not wasm at all"),
        Err(LoadError::NotWasm)
    ));

    let wasi_component =
        wat::parse_str(r#"(component (import "wasi:clocks/wall-clock@0.2.0" (instance)))"#)
            .unwrap();
    let err = Sandbox::normalize(&wasi_component).unwrap_err();
    assert!(
        err.to_string().contains("wasi:clocks/wall-clock@0.2.0"),
        "{err}"
    );

    let wasi_core = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
    )
    .unwrap();
    let err = Sandbox::normalize(&wasi_core).unwrap_err();
    assert!(matches!(err, LoadError::ForbiddenImport { .. }), "{err}");
    assert!(err.to_string().contains("wasi_snapshot_preview1"), "{err}");

    // A core module without our type section is not a machine.
    let plain = wat::parse_str("(module)").unwrap();
    let component = Sandbox::normalize(&plain);
    let sb = sandbox();
    let loaded = component.and_then(|c| unsafe { sb.load(&c, None) });
    assert!(loaded.is_err(), "a module without exports is refused");
}

#[test]
fn core_module_with_type_section_is_accepted() {
    let core = std::fs::read(understudy_examples::COUNTER_CORE_PATH).unwrap();
    let component = Sandbox::normalize(&core).unwrap();
    let sb = sandbox();
    let m = unsafe { sb.load(&component, None) }.unwrap();
    let mut state = Mem::new();
    let out = apply(&sb, &m, &mut state, 1, r#"{"add":{"name":"n","by":5}}"#);
    assert_eq!(out, Outcome::Ok(crate::codec::to_cbor(&5i64).into()));
}

#[test]
fn precompiled_artifact_loads_and_behaves_the_same() {
    let sb = sandbox();
    let component = Sandbox::normalize(understudy_examples::COUNTER).unwrap();
    let artifact = sb.precompile(&component).unwrap();
    let m = unsafe { sb.load(&component, Some(&artifact)) }.unwrap();
    let mut state = Mem::new();
    let out = apply(&sb, &m, &mut state, 1, r#"{"add":{"name":"n","by":2}}"#);
    assert_eq!(out, Outcome::Ok(crate::codec::to_cbor(&2i64).into()));
}

#[test]
fn watchdog_interrupts_without_an_outcome_and_hands_the_view_back() {
    // Fuel high enough that only the wall-clock watchdog can stop the loop.
    let sb = Sandbox::new(SandboxLimits {
        fuel_per_call: u64::MAX / 4,
        watchdog_ms: 50,
        ..SandboxLimits::default()
    })
    .unwrap();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let mut state = Mem::new();
    state.insert(b"kept".to_vec(), b"1".to_vec());
    let failure = sb
        .apply(&m, "t", state, ctx(1), &cbor(r#"{"loop":{"key":"x"}}"#))
        .err()
        .expect("the watchdog must fire");
    assert!(
        matches!(failure.error, SandboxError::Watchdog(50)),
        "{:?}",
        failure.error
    );
    assert_eq!(failure.view.len(), 1, "the view comes back untouched");
}

fn warm_apply(sb: &Sandbox, w: &mut Warm, state: &mut Mem, index: u64, json: &str) -> Call<Mem> {
    let call = sb
        .apply_warm(w, std::mem::take(state), ctx(index), &cbor(json))
        .unwrap();
    *state = call.view.clone();
    for (k, v) in &call.writes {
        match v {
            Some(v) => state.insert(k.clone(), v.clone()),
            None => state.remove(k),
        };
    }
    call
}

fn remembered(out: &Outcome) -> u64 {
    match out {
        Outcome::Ok(bytes) => serde_cbor::from_slice::<(u64, u64)>(bytes).unwrap().0,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_kept_instance_remembers_and_a_fresh_one_does_not() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let mut state = Mem::new();
    for i in 1..=3 {
        let out = apply(&sb, &m, &mut state, i, r#"{"remember":null}"#);
        assert_eq!(remembered(&out), 1);
    }
    let mut w = sb.warm(&m, "t").unwrap();
    for i in 1..=3 {
        let call = warm_apply(&sb, &mut w, &mut state, i, r#"{"remember":null}"#);
        assert_eq!(remembered(&call.outcome), i);
    }
}

#[test]
fn each_call_on_a_kept_instance_has_its_own_writes_and_fuel() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    let mut state = Mem::new();
    let mut w = sb.warm(&m, "t").unwrap();
    let first = warm_apply(&sb, &mut w, &mut state, 1, r#"{"write":{"key":"a"}}"#);
    let second = warm_apply(&sb, &mut w, &mut state, 2, r#"{"write":{"key":"b"}}"#);
    assert_eq!(first.writes.keys().collect::<Vec<_>>(), vec![b"a"]);
    assert_eq!(second.writes.keys().collect::<Vec<_>>(), vec![b"b"]);
    assert!(second.fuel_used > 0 && second.fuel_used < sb.limits().fuel_per_call / 2);
    // The view went in and came back: the second call read through it.
    assert_eq!(state.len(), 2);
    // A refusal leaves the instance usable and writes nothing.
    let refused = warm_apply(&sb, &mut w, &mut state, 3, r#"{"refuse":{"key":"c"}}"#);
    assert!(matches!(refused.outcome, Outcome::Refused { .. }));
    assert!(refused.writes.is_empty() && !w.spent());
    let call = warm_apply(&sb, &mut w, &mut state, 4, r#"{"remember":null}"#);
    assert_eq!(remembered(&call.outcome), 4);
}

#[test]
fn a_trap_or_fuel_exhaustion_spends_a_kept_instance() {
    let sb = sandbox();
    let m = load(&sb, understudy_examples::MISBEHAVE);
    for (cmd, expect_trap) in [
        (r#"{"panic":{"key":"x"}}"#, true),
        (r#"{"loop":{"key":"x"}}"#, false),
    ] {
        let mut state = Mem::new();
        let mut w = sb.warm(&m, "t").unwrap();
        let call = warm_apply(&sb, &mut w, &mut state, 1, cmd);
        match call.outcome {
            Outcome::Trapped { .. } => assert!(expect_trap),
            Outcome::OutOfFuel => assert!(!expect_trap),
            other => panic!("{other:?}"),
        }
        assert!(call.writes.is_empty() && state.is_empty());
        assert!(w.spent());
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The module loader takes a user's bytes: a real machine with
        /// bytes changed, cut short or grown, or noise, is refused with a
        /// reason or loads — never a panic.
        #[test]
        fn fuzz_module_loader_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<Option<usize>>(),
            noise in proptest::collection::vec(any::<u8>(), 0..256),
            raw in any::<bool>(),
        ) {
            let sb = sandbox();
            let mut bytes = if raw { noise } else { understudy_examples::KV.to_vec() };
            if bytes.is_empty() {
                bytes.push(0);
            }
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            if let Some(c) = cut {
                bytes.truncate(c % (bytes.len() + 1));
            }
            if let Ok(component) = Sandbox::normalize(&bytes)
                && let Ok(artifact) = sb.precompile(&component)
            {
                // SAFETY: the artifact was made by this engine just now.
                let _ = unsafe { sb.load(&component, Some(&artifact)) };
            }
        }
    }
}

/// A component whose one function's body is exactly `len` bytes.
fn component_with_function_of(len: usize) -> Vec<u8> {
    // Body: no locals (1 byte), nops, `i32.const 0` (2), `end` (1).
    let nops = "nop ".repeat(len - 4);
    let wasm = wat::parse_str(format!(
        "(component (core module (func (result i32) {nops} i32.const 0)))"
    ))
    .unwrap();
    let sizes: Vec<usize> = wasmparser::Parser::new(0)
        .parse_all(&wasm)
        .filter_map(|p| match p.unwrap() {
            wasmparser::Payload::CodeSectionEntry(b) => Some(b.range().len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![len]);
    wasm
}

#[test]
fn a_function_over_the_body_limit_is_refused_before_anything_compiles() {
    let limit = crate::limits::FUNCTION_BODY_BYTES_MAX;
    let at = component_with_function_of(limit);
    assert!(Sandbox::normalize(&at).is_ok(), "at the limit");
    let err = Sandbox::normalize(&component_with_function_of(limit + 1)).unwrap_err();
    assert!(matches!(err, LoadError::OverLimit(_)), "{err}");
    assert!(err.to_string().contains("FUNCTION_BODY_BYTES_MAX"), "{err}");
    // The shape that kept every node's Cranelift busy for minutes: one
    // 1.6 MB function. Refused by a linear pass.
    let slow = understudy_tests::slow_to_compile_component(1, 160_000);
    let err = Sandbox::normalize(&slow).unwrap_err();
    assert!(err.to_string().contains("FUNCTION_BODY_BYTES_MAX"), "{err}");
    // A core module is checked before it is componentized.
    let core = wat::parse_str(format!(
        "(module (func (result i32) {} i32.const 0))",
        "nop ".repeat(limit)
    ))
    .unwrap();
    let err = Sandbox::normalize(&core).unwrap_err();
    assert!(err.to_string().contains("FUNCTION_BODY_BYTES_MAX"), "{err}");
}
