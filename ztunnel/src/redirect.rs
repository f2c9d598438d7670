//! Outbound capture by iptables `REDIRECT` (port 15001): the original destination is read with
//! `getsockopt(SO_ORIGINAL_DST)` (`IP6T_SO_ORIGINAL_DST` for IPv6), falling back to the socket's local address
//! when that fails (no netfilter redirect happened — in which case the planner refuses it as a self-call).
//!
//! Per connection: **original destination** → **connect** through [`Outbound`] → **splice**. There is no
//! reply channel: a failure just closes the client's connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::drain::Drain;
use crate::outbound::plan::Destination;
use crate::outbound::{splice_upstream, Outbound};

/// The destination the client dialled before netfilter redirected it here.
#[cfg(target_os = "linux")]
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::fd::AsRawFd;

    let fd = stream.as_raw_fd();
    match stream.local_addr()? {
        SocketAddr::V4(_) => {
            // SAFETY: a zeroed sockaddr_in is valid; getsockopt writes at most `len` bytes into it.
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_IP,
                    libc::SO_ORIGINAL_DST,
                    (&mut addr as *mut libc::sockaddr_in).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Ok(SocketAddr::new(ip.into(), u16::from_be(addr.sin_port)))
        }
        SocketAddr::V6(_) => {
            // SAFETY: as above, with sockaddr_in6.
            let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_IPV6,
                    libc::IP6T_SO_ORIGINAL_DST,
                    (&mut addr as *mut libc::sockaddr_in6).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Ok(SocketAddr::new(ip.into(), u16::from_be(addr.sin6_port)))
        }
    }
}

/// Not available off Linux: always the fallback.
#[cfg(not(target_os = "linux"))]
pub fn original_dst(_stream: &TcpStream) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_ORIGINAL_DST is Linux-only",
    ))
}

/// The original destination, or the socket's local address when `SO_ORIGINAL_DST` is unavailable.
pub fn destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    match original_dst(stream) {
        Ok(addr) => Ok(addr),
        Err(e) => {
            tracing::debug!("SO_ORIGINAL_DST: {e}; using the local address");
            stream.local_addr()
        }
    }
}

/// Accepts redirected connections until the drain's stop signal.
pub async fn run(listener: TcpListener, outbound: Arc<Outbound>, drain: Drain) {
    crate::outbound::accept_loop(
        listener,
        "redirect",
        outbound,
        drain,
        |stream, client, outbound| async move { serve_one(stream, client, &outbound).await },
    )
    .await;
}

async fn serve_one(stream: TcpStream, client: SocketAddr, outbound: &Outbound) {
    let _ = stream.set_nodelay(true);
    let dest = match destination(&stream) {
        Ok(d) => Destination::Addr(d),
        Err(e) => return tracing::debug!(%client, "redirect: {e}"),
    };
    match outbound.connect(client, &dest).await {
        Ok((_, upstream)) => splice_upstream(stream, upstream).await,
        Err(e) => tracing::info!(%client, %dest, "outbound refused: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_netfilter_falls_back_to_local_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(original_dst(&server).is_err());
        assert_eq!(destination(&server).unwrap(), addr);
    }
}
