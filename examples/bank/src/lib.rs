//! `bank`: accounts and transfers. Money is only created by `open` (initial
//! deposit) and never by a transfer, so the total is invariant across
//! transfers; an overdraft is refused and changes nothing.
//!
//! Commands: `{"open":{"account":"alice","deposit":100}}`,
//! `{"transfer":{"from":"alice","to":"bob","amount":30}}`.
//! Queries: `{"balance":{"account":"alice"}}`, `"total"`.

use serde::{Deserialize, Serialize};
use understudy_guest::{Context, Machine, MachineError, kv, log};

pub struct Bank;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Open {
        account: String,
        deposit: u64,
    },
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Balance { account: String },
    Total,
}

#[derive(Serialize)]
pub struct Receipt {
    pub from_balance: u64,
    pub to_balance: u64,
    pub at_ms: u64,
}

fn key(account: &str) -> String {
    format!("acct/{account}")
}

fn balance(account: &str) -> Result<u64, MachineError> {
    kv::get::<u64>(key(account))?.ok_or_else(|| {
        MachineError::new(
            "no-such-account",
            format!("account {account} does not exist"),
        )
    })
}

impl Machine for Bank {
    type Command = Command;
    type Response = Receipt;
    type Query = Query;
    type QueryResponse = u64;

    fn apply(ctx: &Context, command: Command) -> Result<Receipt, MachineError> {
        match command {
            Command::Open { account, deposit } => {
                if kv::get::<u64>(key(&account))?.is_some() {
                    return Err(MachineError::new(
                        "exists",
                        format!("account {account} already exists"),
                    ));
                }
                kv::put(key(&account), &deposit)?;
                Ok(Receipt {
                    from_balance: deposit,
                    to_balance: deposit,
                    at_ms: ctx.now_ms(),
                })
            }
            Command::Transfer { from, to, amount } => {
                if from == to {
                    return Err(MachineError::new(
                        "same-account",
                        "cannot transfer to the same account",
                    ));
                }
                let from_balance = balance(&from)?;
                let to_balance = balance(&to)?;
                let Some(new_from) = from_balance.checked_sub(amount) else {
                    return Err(MachineError::new(
                        "insufficient-funds",
                        format!("{from} has {from_balance}, cannot send {amount}"),
                    ));
                };
                let new_to = to_balance
                    .checked_add(amount)
                    .ok_or_else(|| MachineError::new("overflow", "balance would overflow"))?;
                kv::put(key(&from), &new_from)?;
                kv::put(key(&to), &new_to)?;
                log!(debug, "transfer {amount} {from} -> {to}");
                Ok(Receipt {
                    from_balance: new_from,
                    to_balance: new_to,
                    at_ms: ctx.now_ms(),
                })
            }
        }
    }

    fn query(q: Query) -> Result<u64, MachineError> {
        match q {
            Query::Balance { account } => balance(&account),
            Query::Total => {
                let mut total = 0u64;
                let mut start = b"acct/".to_vec();
                let end = kv::prefix_end(b"acct/");
                loop {
                    let page = kv::range::<u64>(&start, end.as_deref(), 1000)?;
                    let Some((last, _)) = page.last() else { break };
                    start = last.clone();
                    start.push(0);
                    total += page.iter().map(|(_, v)| *v).sum::<u64>();
                }
                Ok(total)
            }
        }
    }
}

understudy_guest::export_machine!(Bank);
