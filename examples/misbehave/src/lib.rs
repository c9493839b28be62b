//! `misbehave`: a machine that does what a machine must never be allowed to
//! hurt the host with, on command. Used by the sandbox tests.

use serde::Deserialize;
use understudy_guest::{Context, Machine, MachineError, kv};

pub struct Misbehave;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Write `key`, then spin forever (fuel must stop it; the write is rolled back).
    Loop { key: String },
    /// Write `key`, then allocate `mib` MiB (the memory limit must stop it).
    Alloc { key: String, mib: u32 },
    /// Write `key`, then panic (a trap).
    Panic { key: String },
    /// Write `key`, then refuse (a machine error; the write is rolled back).
    Refuse { key: String },
    /// Write `key` and succeed.
    Write { key: String },
    /// Return the entry's time and one random number.
    Entropy,
    /// Write a value of each size (bytes of `x`) under keys `f0`, `f1`, …
    /// (raw bytes, no CBOR): a write-set of exactly
    /// `sum(len(key) + size)` bytes.
    Fill { sizes: Vec<u32> },
    /// Refuse with code `loud` and a message of `bytes` bytes.
    Shout { bytes: u32 },
    /// Return (and write under `remembered`) how many commands this
    /// instance has applied, itself included: memory a machine must not
    /// rely on, which shows whether calls shared an instance.
    Remember,
}

/// Commands this instance has applied.
static APPLIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Read {
        key: String,
    },
    /// A query that tries to write: must trap.
    Write {
        key: String,
    },
    Loop,
}

impl Machine for Misbehave {
    type Command = Command;
    type Response = (u64, u64);
    type Query = Query;
    type QueryResponse = Option<String>;

    fn apply(ctx: &Context, command: Command) -> Result<(u64, u64), MachineError> {
        let applied = APPLIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match command {
            Command::Loop { key } => {
                kv::put(&key, &"looping")?;
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            Command::Alloc { key, mib } => {
                kv::put(&key, &"allocating")?;
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                for _ in 0..mib {
                    hoard.push(vec![1u8; 1 << 20]);
                }
                Ok((std::hint::black_box(hoard).len() as u64, 0))
            }
            Command::Panic { key } => {
                kv::put(&key, &"panicking")?;
                panic!("misbehave: asked to panic");
            }
            Command::Refuse { key } => {
                kv::put(&key, &"refused")?;
                Err(MachineError::new("refused", "asked to refuse"))
            }
            Command::Write { key } => {
                kv::put(&key, &"written")?;
                Ok((0, 0))
            }
            Command::Fill { sizes } => {
                for (i, size) in sizes.iter().enumerate() {
                    kv::put_raw(format!("f{i}"), &vec![b'x'; *size as usize]);
                }
                Ok((sizes.len() as u64, 0))
            }
            Command::Shout { bytes } => Err(MachineError::new("loud", "x".repeat(bytes as usize))),
            Command::Entropy => Ok((ctx.now_ms(), understudy_guest::random())),
            Command::Remember => {
                kv::put("remembered", &applied)?;
                Ok((applied, 0))
            }
        }
    }

    fn query(q: Query) -> Result<Option<String>, MachineError> {
        match q {
            Query::Read { key } => kv::get(&key),
            Query::Write { key } => {
                kv::put(&key, &"from a query")?;
                Ok(None)
            }
            Query::Loop => loop {
                std::hint::black_box(());
            },
        }
    }
}

understudy_guest::export_machine!(Misbehave);
