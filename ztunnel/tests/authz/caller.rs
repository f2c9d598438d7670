//! A raw HBONE caller for the authorization tests: its own TCP connection bound to a chosen source IP, mutual
//! TLS with the caller's certificate (the server's identity checked), HTTP/2 and one CONNECT — so a test picks
//! both the identity and the address the node tier judges. Every step is bounded by [`PATIENCE`].

use std::net::{IpAddr, SocketAddr};

use http::{Method, Request, StatusCode};
use mesh::hbone::H2Stream;
use mesh::identity::{CertStore, Identity};
use tokio::net::TcpSocket;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::fixture::PATIENCE;

/// Who calls, and from where.
pub struct Caller {
    pub store: CertStore,
    pub from: IpAddr,
}

impl Caller {
    /// CONNECTs to `authority` through the HBONE listener `hbone` (which must present `expected`); returns the
    /// status and, on `200`, the stream.
    pub async fn connect(
        &self,
        hbone: SocketAddr,
        expected: &Identity,
        authority: SocketAddr,
    ) -> (StatusCode, Option<H2Stream>) {
        let work = async {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(self.from, 0)).unwrap();
            let tcp = sock.connect(hbone).await.unwrap();
            let config = self.store.client_config(std::slice::from_ref(expected));
            // No SNI: an IP name is never sent; the server's SPIFFE identity is what is verified.
            let name = ServerName::IpAddress(hbone.ip().into());
            let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
            let (send, conn) = h2::client::handshake(tls).await.unwrap();
            tokio::spawn(conn);
            let mut send = send.ready().await.unwrap();
            let req = Request::builder()
                .method(Method::CONNECT)
                .uri(authority.to_string())
                .body(())
                .unwrap();
            let (response, stream) = send.send_request(req, false).unwrap();
            let response = response.await.unwrap();
            let status = response.status();
            let stream =
                (status == StatusCode::OK).then(|| H2Stream::new(stream, response.into_body()));
            (status, stream)
        };
        tokio::time::timeout(PATIENCE, work)
            .await
            .expect("CONNECT answered in time")
    }
}
