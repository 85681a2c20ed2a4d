//! Running an actix-web server on the current actix system, with bind errors that name the
//! address. Shared by everything that serves HTTP, so none of them depends on another.

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;

/// Run a bound server on the current actix system; returns where it listens.
pub fn spawn_server(
    server: actix_web::dev::Server,
    addrs: &[SocketAddr],
    addr: &str,
) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let bound = addrs
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other(format!("no address bound for {addr}")))?;
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((bound, handle))
}

/// The error for an address that cannot be listened on, naming it.
pub fn cannot_listen(addr: &str) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}
