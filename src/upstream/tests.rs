//! The peer of a try, by destination kind, and the relay's CONNECT head.

use super::*;
use crate::snapshot::HboneUpstream;
use pingora::upstreams::peer::Peer;

fn hbone_endpoint() -> Upstream {
    let hbone = HboneUpstream {
        hbone_addr: "10.1.0.1:15008".parse().unwrap(),
        identity: Identity::new("cluster.local", "default", "reviews"),
    };
    Upstream::new("10.1.0.1:8080".parse().unwrap(), Some(hbone))
}

fn ways() -> Ways {
    crate::testbed::dev_ways()
}

#[test]
fn each_kind_of_destination_gets_its_way() {
    let ways = ways();
    let (hbone, plain) = (
        hbone_endpoint(),
        Upstream::new("10.1.0.2:8080".parse().unwrap(), None),
    );
    let slot = Some(SlotTag {
        service: 7,
        index: 2,
    });
    let h2c = TryOptions {
        h2c: true,
        ..Default::default()
    };
    // (endpoint, options, through the relay, on the direct path)
    let table = [
        (&hbone, TryOptions::default(), false, true),
        (
            &hbone,
            TryOptions {
                slot,
                ..Default::default()
            },
            false,
            true,
        ),
        (&hbone, h2c, true, false),
        (&plain, TryOptions::default(), false, false),
        (
            &plain,
            TryOptions {
                slot,
                ..Default::default()
            },
            false,
            true,
        ),
        (&plain, h2c, false, false),
    ];
    for (i, (up, opts, relayed, direct)) in table.into_iter().enumerate() {
        let (peer, link) = peer(up, &ways, opts);
        assert_eq!(peer.proxy.is_some(), relayed, "row {i}: relayed");
        assert_eq!(link.is_some(), direct, "row {i}: direct");
        assert_eq!(
            peer.options.custom_l4.is_some(),
            direct,
            "row {i}: the link is the peer's connector"
        );
        if relayed {
            let proxy = peer.proxy.as_ref().unwrap();
            assert_eq!(
                &*proxy.next_hop,
                Path::new("/run/waypoint/relay.sock"),
                "row {i}"
            );
            let value = std::str::from_utf8(&proxy.headers[HDR_HBONE]).unwrap();
            assert_eq!(
                value,
                "10.1.0.1:15008 spiffe://cluster.local/ns/default/sa/reviews"
            );
        } else {
            assert_eq!(peer.address().to_string(), up.addr.to_string(), "row {i}");
        }
        if let Some(link) = link {
            assert_eq!(link.connection_use(), None, "row {i}: not connected yet");
        }
    }
}

#[test]
fn a_retry_never_shares_a_pingora_pool_key() {
    let ways = ways();
    let plain = Upstream::new("10.1.0.2:8080".parse().unwrap(), None);
    let fresh = TryOptions {
        fresh: true,
        ..Default::default()
    };
    let (a, _) = peer(&plain, &ways, TryOptions::default());
    let (b, _) = peer(&plain, &ways, fresh);
    let (c, _) = peer(&plain, &ways, fresh);
    assert_eq!(a.group_key, 0);
    assert_ne!(b.group_key, c.group_key);
    let h2c = TryOptions { h2c: true, ..fresh };
    let up = hbone_endpoint();
    let (d, _) = peer(&up, &ways, h2c);
    let (e, _) = peer(&up, &ways, h2c);
    assert_ne!(d.group_key, e.group_key);
    // The relayed peer is built once per endpoint and copied per try.
    let pooled = TryOptions {
        fresh: false,
        ..h2c
    };
    let (f, _) = peer(&up, &ways, pooled);
    assert!(up.peer.0.get().unwrap().relayed.get().is_some());
    assert_eq!(f.group_key, 0);
    assert_eq!(
        f.proxy.as_ref().unwrap().headers,
        d.proxy.as_ref().unwrap().headers
    );
}

#[test]
fn the_relay_reads_what_a_peer_sends() {
    let ways = ways();
    let up = hbone_endpoint();
    let h2c = TryOptions {
        h2c: true,
        ..Default::default()
    };
    let (peer, _) = peer(&up, &ways, h2c);
    let proxy = peer.proxy.as_ref().unwrap();
    let h = up.hbone.as_ref().unwrap();
    let head = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\n{HDR_HBONE}: {}",
        up.addr,
        up.addr,
        std::str::from_utf8(&proxy.headers[HDR_HBONE]).unwrap()
    );
    let target = parse_head(&head).unwrap();
    assert_eq!(target.authority, up.addr);
    assert_eq!(target.hbone, (h.hbone_addr, h.identity.clone()));
    for bad in [
        "CONNECT 10.1.0.1:8080 HTTP/1.1\r\nx-waypoint-hbone: 10.1.0.1:15008",
        "CONNECT 10.1.0.1:8080 HTTP/1.1\r\nHost: x",
        "GET / HTTP/1.1\r\nx-waypoint-hbone: 10.1.0.1:15008 spiffe://cluster.local/ns/a/sa/b",
        "CONNECT nowhere HTTP/1.1",
    ] {
        assert!(parse_head(bad).is_err(), "{bad:?}");
    }
}
