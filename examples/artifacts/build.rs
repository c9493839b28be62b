//! Compiles the example machines for `wasm32-unknown-unknown` with a nested
//! cargo (its own target dir, so it never waits on the outer build's lock) and
//! turns each core module into a component with `wit-component`. The pattern
//! is wasmtime's `test-programs/artifacts`.

use std::path::{Path, PathBuf};
use std::process::Command;

const MACHINES: &[&str] = &["kv", "counter", "bank", "misbehave"];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    for dir in ["wit", "guest"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for m in MACHINES {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("examples").join(m).display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    let target_dir = out_dir.join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target=wasm32-unknown-unknown")
        .arg("--target-dir")
        .arg(&target_dir);
    for m in MACHINES {
        cmd.arg("-p").arg(format!("understudy-example-{m}"));
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the host.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    let status = cmd
        .status()
        .expect("failed to run cargo for the guest machines");
    if !status.success() {
        panic!(
            "building the example machines for wasm32-unknown-unknown failed; \
             is the target installed? run `rustup target add wasm32-unknown-unknown`"
        );
    }

    let mut generated = String::new();
    for m in MACHINES {
        let core = target_dir
            .join("wasm32-unknown-unknown/release")
            .join(format!("understudy_example_{m}.wasm"));
        let component = componentize(&core);
        let path = out_dir.join(format!("{m}.component.wasm"));
        std::fs::write(&path, &component).unwrap();
        let upper = m.to_uppercase();
        generated.push_str(&format!(
            "/// The `{m}` example machine as a component.\n\
             pub const {upper}: &[u8] = include_bytes!({path:?});\n\
             /// Path of the `{m}` component file.\n\
             pub const {upper}_PATH: &str = {path:?};\n\
             /// Path of the `{m}` core module (with its WIT type section, before componentizing).\n\
             pub const {upper}_CORE_PATH: &str = {core:?};\n",
        ));
    }
    std::fs::write(out_dir.join("machines.rs"), generated).unwrap();
}

fn componentize(core: &Path) -> Vec<u8> {
    let bytes = std::fs::read(core).unwrap_or_else(|e| panic!("read {}: {e}", core.display()));
    wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|e| e.validate(true).encode())
        .unwrap_or_else(|e| panic!("componentize {}: {e:?}", core.display()))
}
