//! `commerce token customer <id>` / `commerce token operator`: a bearer token for the HTTP API,
//! signed with the data dir's key (the one `commerce up`'s gateway checks). For trying the API
//! and for operators; a shop's customers get theirs from its identity provider.

use std::time::Duration;

use actors::gateway::auth::{mint, Caller};
use actors::Settings;

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// A customer's token: places, reads and cancels that customer's orders only.
    Customer {
        id: String,
        /// Valid for this many hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
    /// An operator's token: every order, and the operator surfaces (`?guards=false`).
    Operator {
        #[arg(long, default_value_t = 1)]
        ttl_hours: u64,
    },
}

pub fn run(command: TokenCommand, settings: &Settings) -> anyhow::Result<()> {
    let (caller, hours) = match command {
        TokenCommand::Customer { id, ttl_hours } => {
            anyhow::ensure!(!id.trim().is_empty(), "a customer id is needed");
            (Caller::Customer(id.trim().to_string()), ttl_hours)
        }
        TokenCommand::Operator { ttl_hours } => (Caller::Operator, ttl_hours),
    };
    let ttl = Duration::from_secs(hours.saturating_mul(3600));
    println!("{}", mint(&settings.data_dir, &caller, ttl)?);
    Ok(())
}
