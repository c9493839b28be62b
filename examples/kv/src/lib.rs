//! `kv`: a string key-value store with compare-and-set.
//!
//! Commands (JSON as the CLI takes them):
//! `{"put":{"key":"a","value":"1"}}`, `{"delete":{"key":"a"}}`,
//! `{"cas":{"key":"a","expected":"1","new":"2"}}` (`expected: null` = must be absent).
//! Queries: `{"get":{"key":"a"}}`, `{"scan":{"prefix":"","limit":100}}`.

use serde::{Deserialize, Serialize};
use understudy_guest::{Context, Machine, MachineError, kv};

pub struct Kv;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Get { key: String },
    Scan { prefix: String, limit: u32 },
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum Answer {
    Value(Option<String>),
    Pairs(Vec<(String, String)>),
}

impl Machine for Kv {
    type Command = Command;
    type Response = Option<String>; // the previous value
    type Query = Query;
    type QueryResponse = Answer;

    fn apply(_ctx: &Context, command: Command) -> Result<Option<String>, MachineError> {
        match command {
            Command::Put { key, value } => {
                let old = kv::get(&key)?;
                kv::put(&key, &value)?;
                Ok(old)
            }
            Command::Delete { key } => {
                let old = kv::get(&key)?;
                kv::delete(&key);
                Ok(old)
            }
            Command::Cas { key, expected, new } => {
                let current: Option<String> = kv::get(&key)?;
                if current != expected {
                    return Err(MachineError::new(
                        "cas-mismatch",
                        match &current {
                            Some(v) => format!("{key} is {v:?}, not the expected value"),
                            None => format!("{key} is not set"),
                        },
                    ));
                }
                kv::put(&key, &new)?;
                Ok(current)
            }
        }
    }

    fn query(request: Query) -> Result<Answer, MachineError> {
        match request {
            Query::Get { key } => Ok(Answer::Value(kv::get(&key)?)),
            Query::Scan { prefix, limit } => {
                let end = kv::prefix_end(prefix.as_bytes());
                let pairs = kv::range::<String>(&prefix, end.as_deref(), limit)?;
                Ok(Answer::Pairs(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                        .collect(),
                ))
            }
        }
    }
}

understudy_guest::export_machine!(Kv);
