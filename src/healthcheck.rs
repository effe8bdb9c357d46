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
pub async fn check(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}/readyz").parse()?;
    let response = tokio::time::timeout(timeout, client.get(uri))
        .await
        .with_context(|| format!("no answer from {addr} within {timeout:?}"))?
        .with_context(|| format!("cannot reach {addr}"))?;
    if !response.status().is_success() {
        bail!("{addr}/readyz answered {}", response.status());
    }
    Ok(())
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
