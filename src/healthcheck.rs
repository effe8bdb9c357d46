//! `gifts healthcheck`: asks a running service's `/readyz`, for container
//! health checks that need nothing but this binary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The address to reach a service listening on `listen`: a wildcard host
/// (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn target(listen: &str) -> anyhow::Result<SocketAddr> {
    let mut addr = listen
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {listen}"))?
        .next()
        .with_context(|| format!("{listen} resolves to nothing"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Ok(addr)
}

/// Succeeds when `GET http://{addr}/readyz` answers 200 within `timeout`.
/// The error is one line: what failed, where, and what to check.
pub async fn check(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}/readyz").parse()?;
    let Ok(answer) = tokio::time::timeout(timeout, client.get(uri)).await else {
        bail!(
            "no answer from http://{addr}/readyz within {timeout:?}: is the service there busy or stuck? (--timeout-secs waits longer)"
        );
    };
    let response = answer.map_err(|e| {
        // hyper's chain (client error, connect error, the OS's) says one
        // thing: the last link.
        let cause = std::error::Error::source(&e)
            .map_or_else(|| e.to_string(), |s| root_cause(s).to_string());
        anyhow::anyhow!(
            "cannot reach the service at {addr}: {cause}; is it running, and is --listen (GIFTS_LISTEN) its address?"
        )
    })?;
    if !response.status().is_success() {
        bail!(
            "http://{addr}/readyz answered {}: the service is up but not ready (draining, or its store is not writable; its log says which)",
            response.status()
        );
    }
    Ok(())
}

/// The innermost error of a chain.
fn root_cause<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_checked_on_loopback() {
        assert_eq!(
            target("0.0.0.0:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(target("[::]:9000").unwrap().port(), 9000);
        assert!(target("[::]:9000").unwrap().ip().is_loopback());
        assert_eq!(
            target("127.0.0.2:81").unwrap(),
            "127.0.0.2:81".parse().unwrap()
        );
    }
}
