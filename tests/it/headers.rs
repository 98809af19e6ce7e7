//! What the backend receives: forwarding headers set, hop-by-hop headers gone, request ids.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_request_ids_and_hop_by_hop_removal() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&one_service(&[(&b, 1)], "")).await;
    let c = client();
    let a = send(
        &c,
        g.addr(),
        "GET",
        "Shop.Example.com:8443",
        "/p?q=1",
        &[
            ("connection", "x-secret"),
            ("x-secret", "must not reach the backend"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let seen = b.last();
    let h = &seen.headers;
    assert_eq!(seen.uri, "/p?q=1");
    assert_eq!(
        h["host"], "Shop.Example.com:8443",
        "the Host header passes unchanged"
    );
    assert_eq!(h["x-forwarded-host"], "Shop.Example.com:8443");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "a client's own X-Forwarded-For is replaced: nobody is trusted by default"
    );
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "a client cannot claim https on a plain listener"
    );
    for gone in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} reached the backend");
    }
    let id = h["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        a.headers["x-request-id"],
        id.as_str(),
        "the client sees the id the backend saw"
    );

    // A request id from the client is kept.
    let a = send(&c, g.addr(), "GET", "h", "/", &[("x-request-id", "abc-123")])
        .await
        .unwrap();
    assert_eq!(b.last().headers["x-request-id"], "abc-123");
    assert_eq!(a.headers["x-request-id"], "abc-123");
    g.running.shutdown().await;
}

/// A client cannot pass its own `X-Real-IP` or `Forwarded` (which backends may believe) to the
/// backend by sending many other forwarded names before them: the strip once gathered at most 16
/// names in a pass and let the rest through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_real_ip_goes_however_many_forwarded_headers_come_first() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&one_service(&[(&b, 1)], "")).await;
    let c = client();
    let names: Vec<String> = (0..20).map(|i| format!("x-forwarded-n{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    headers.push(("x-forwarded-for", "203.0.113.9"));
    headers.push(("x-real-ip", "203.0.113.9"));
    headers.push(("forwarded", "for=203.0.113.9"));
    let a = send(&c, g.addr(), "GET", "h", "/", &headers).await.unwrap();
    assert_eq!(a.status, 200);
    let h = b.last().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    for gone in ["x-real-ip", "forwarded"]
        .into_iter()
        .chain(names.iter().map(String::as_str))
    {
        assert!(!h.contains_key(gone), "the client's {gone} reached the backend");
    }
    g.running.shutdown().await;
}
