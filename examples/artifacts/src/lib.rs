//! The example machines, compiled for `wasm32-unknown-unknown` and encoded as
//! components by this crate's build script. `KV`, `COUNTER`, `BANK` and
//! `MISBEHAVE` are the component bytes; `*_PATH` point at the files.

include!(concat!(env!("OUT_DIR"), "/machines.rs"));

/// Every example by name, for the CLI's `--example` flag and the tests.
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    match name {
        "kv" => Some(KV),
        "counter" => Some(COUNTER),
        "bank" => Some(BANK),
        "misbehave" => Some(MISBEHAVE),
        _ => None,
    }
}
