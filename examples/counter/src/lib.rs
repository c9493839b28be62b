//! `counter`: named counters. Command `{"add":{"name":"hits","by":1}}` returns
//! the new value; query `{"name":"hits"}` reads one.

use serde::Deserialize;
use understudy_guest::{Context, Machine, MachineError, kv};

pub struct Counter;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Add { name: String, by: i64 },
    Reset { name: String },
}

#[derive(Deserialize)]
pub struct Query {
    pub name: String,
}

impl Machine for Counter {
    type Command = Command;
    type Response = i64;
    type Query = Query;
    type QueryResponse = i64;

    fn apply(_ctx: &Context, command: Command) -> Result<i64, MachineError> {
        match command {
            Command::Add { name, by } => {
                let value = kv::get::<i64>(&name)?.unwrap_or(0);
                let value = value.checked_add(by).ok_or_else(|| {
                    MachineError::new("overflow", format!("{name} would overflow"))
                })?;
                kv::put(&name, &value)?;
                Ok(value)
            }
            Command::Reset { name } => {
                kv::delete(&name);
                Ok(0)
            }
        }
    }

    fn query(q: Query) -> Result<i64, MachineError> {
        Ok(kv::get::<i64>(&q.name)?.unwrap_or(0))
    }
}

understudy_guest::export_machine!(Counter);
