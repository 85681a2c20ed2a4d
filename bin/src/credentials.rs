//! `commerce credentials`: the broker identities for a server someone else runs. Makes (or
//! keeps) one nkey per component, one per component's replays and one for the operator under
//! `<data-dir>/credentials/` (0600), and prints the nats-server `authorization` block that
//! admits them with their permissions: the block holds public keys only, so it may be shown and
//! copied into the server's config.

use actors::access::Keyring;
use actors::Settings;

pub fn run(settings: &Settings) -> anyhow::Result<()> {
    let (_, authorization) = Keyring::prepare(&settings.data_dir, settings.routes())?;
    eprintln!(
        "credentials: {} (give each process its file, --nats-creds or NATS_CREDS, with its \
         replays' <name>-replayer.nk beside it)",
        actors::access::credentials_dir(&settings.data_dir).display()
    );
    print!("{authorization}");
    Ok(())
}
