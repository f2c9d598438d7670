//! Round trips of the generated messages, the ext_authz field numbers checked against hand-encoded bytes, and
//! one `Authorization/Check` call through the generated tonic client and server over a loopback socket.

use crate::config::v1::*;
use crate::envoy::config::core::v3::{
    address, socket_address, Address, HeaderValue, HeaderValueOption, SocketAddress,
};
use crate::envoy::r#type::v3::{HttpStatus, StatusCode};
use crate::envoy::service::auth::v3::{
    attribute_context, authorization_client::AuthorizationClient, authorization_server,
    check_response, AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse,
    OkHttpResponse,
};
use crate::google::rpc::Status;
use prost::Message;

#[test]
fn snapshot_round_trips() {
    let snap = Snapshot {
        generation: 7,
        gateway: "default/waypoint".into(),
        services: vec![ServiceRoutes {
            name: "default/reviews".into(),
            address: "127.0.0.100:9080".into(),
            matches: vec![RouteMatch {
                path: Some(route_match::Path::Prefix("/".into())),
                rule: 0,
            }],
            ..Default::default()
        }],
    };
    let bytes = snap.encode_to_vec();
    assert_eq!(Snapshot::decode(bytes.as_slice()).unwrap(), snap);
}

fn sample_request() -> CheckRequest {
    let peer = |ip: &str, port: u32, principal: &str| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        principal: principal.into(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(
                "10.0.0.1",
                40000,
                "spiffe://cluster.local/ns/default/sa/productpage",
            )),
            destination: Some(peer("10.96.0.10", 9080, "")),
            request: Some(attribute_context::Request {
                time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                http: Some(attribute_context::HttpRequest {
                    id: "req-1".into(),
                    method: "GET".into(),
                    headers: [("x-user".to_string(), "alice".to_string())].into(),
                    path: "/reviews/1?x=y".into(),
                    host: "reviews:9080".into(),
                    scheme: "http".into(),
                    size: -1,
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

#[test]
fn check_messages_round_trip() {
    let req = sample_request();
    assert_eq!(
        CheckRequest::decode(req.encode_to_vec().as_slice()).unwrap(),
        req
    );

    let header = |k: &str, v: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        append: Some(false),
        ..Default::default()
    };
    let denied = CheckResponse {
        status: Some(Status {
            code: 7,
            message: "no".into(),
            details: vec![],
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: StatusCode::Unauthorized as i32,
                }),
                headers: vec![header("www-authenticate", "Bearer")],
                body: "go away".into(),
            },
        )),
    };
    assert_eq!(
        CheckResponse::decode(denied.encode_to_vec().as_slice()).unwrap(),
        denied
    );

    let ok = CheckResponse {
        status: Some(Status::default()),
        http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![header("x-authz", "yes")],
            headers_to_remove: vec!["authorization".into()],
            response_headers_to_add: vec![header("x-seen", "1")],
        })),
    };
    assert_eq!(
        CheckResponse::decode(ok.encode_to_vec().as_slice()).unwrap(),
        ok
    );
}

/// Field numbers pinned against bytes written by hand from Envoy's protos: a renumbering breaks this test.
#[test]
fn field_numbers_match_envoy() {
    // CheckResponse.status (1) { code (1) = 7 }
    let r = CheckResponse {
        status: Some(Status {
            code: 7,
            ..Default::default()
        }),
        http_response: None,
    };
    assert_eq!(r.encode_to_vec(), [0x0a, 0x02, 0x08, 0x07]);

    // CheckResponse.denied_response (2) { status (1) { code (1) = 401 } , body (3) = "x" }
    let r = CheckResponse {
        status: None,
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![],
                body: "x".into(),
            },
        )),
    };
    assert_eq!(
        r.encode_to_vec(),
        [0x12, 0x08, 0x0a, 0x03, 0x08, 0x91, 0x03, 0x1a, 0x01, b'x']
    );

    // CheckResponse.ok_response (3) { headers_to_remove (5) = "a", headers (2) { header (1) { key (1) = "k" } } }
    let r = CheckResponse {
        status: None,
        http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "k".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            headers_to_remove: vec!["a".into()],
            response_headers_to_add: vec![],
        })),
    };
    assert_eq!(
        r.encode_to_vec(),
        [0x1a, 0x0a, 0x12, 0x05, 0x0a, 0x03, 0x0a, 0x01, b'k', 0x2a, 0x01, b'a']
    );

    // CheckRequest.attributes (1) { request (4) { http (2) { path (4) = "/" , protocol (10) = "h" } } }
    let r = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    path: "/".into(),
                    protocol: "h".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    assert_eq!(
        r.encode_to_vec(),
        [0x0a, 0x0a, 0x22, 0x08, 0x12, 0x06, 0x22, 0x01, b'/', 0x52, 0x01, b'h']
    );

    // AttributeContext.source (1) { principal (4) = "p", address (1) { socket_address (1) { port_value (3) = 1 } } }
    let r = AttributeContext {
        source: Some(attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(1)),
                    ..Default::default()
                })),
            }),
            principal: "p".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        r.encode_to_vec(),
        [0x0a, 0x09, 0x0a, 0x04, 0x0a, 0x02, 0x18, 0x01, 0x22, 0x01, b'p']
    );
}

struct Echo;

#[tonic::async_trait]
impl authorization_server::Authorization for Echo {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let http = request
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status {
                code: 7,
                message: format!("{} {}", http.method, http.path),
                details: vec![],
            }),
            http_response: None,
        }))
    }
}

/// The generated client and server talk over a real loopback socket.
#[tokio::test]
async fn generated_client_and_server_talk() {
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let server = tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
        authorization_server::AuthorizationServer::new(Echo),
        incoming,
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut client = AuthorizationClient::new(channel);
    let resp = client.check(sample_request()).await.unwrap().into_inner();
    assert_eq!(resp.status.unwrap().message, "GET /reviews/1?x=y");
    server.abort();
}
