//! Middlewares declared in the config file and attached to routers: header rules, IP allow
//! lists, basic authentication and rate limits, each checked with a real client against a
//! backend that records what it receives; a router naming a middleware that does not exist
//! answers 503 until it does.

use std::time::{Duration, Instant};

use crate::support::*;

/// A bcrypt hash of `password` (cost 4: the tests check behaviour, not bcrypt's strength).
pub(crate) fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

pub(crate) fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One router `web` over `backend` with these middlewares declared and attached, and the
/// entrypoint trusting loopback peers (so that tests can speak for other client addresses
/// with `X-Forwarded-For`).
pub(crate) fn config(backend: &Backend, declared: &str, attached: &[&str]) -> String {
    let attached: Vec<String> = attached.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[entrypoints.web]\naddress = \"127.0.0.1:0\"\ntrusted_ips = [\"127.0.0.0/8\"]\n\n\
         [routers.web]\npath_prefix = \"/\"\nservice = \"svc\"\nmiddlewares = [{}]\n\n\
         [services.svc]\nbackends = [{{ url = \"{}\" }}]\n\n{declared}",
        attached.join(", "),
        backend.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_edit_requests_and_responses_in_order() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&config(
        &b,
        r#"
[middlewares.env.headers]
request = { set = { X-Env = "prod" }, remove = ["X-Debug"] }
response = { set = { X-Served-By = "gantry" }, add = { Cache-Control = "no-store" } }
[middlewares.secure.headers]
security = true
request = { set = { X-Env = "prod-2" } }
"#,
        &["env", "secure"],
    ))
    .await;
    let a = send(
        &client(),
        g.addr(),
        "GET",
        "h.test",
        "/",
        &[("x-debug", "1"), ("x-env", "dev")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let seen = b.last().headers;
    assert_eq!(seen["x-env"], "prod-2", "the later middleware's set wins");
    assert!(!seen.contains_key("x-debug"));
    assert_eq!(a.headers["x-served-by"], "gantry");
    assert_eq!(a.headers["cache-control"], "no-store");
    assert_eq!(a.headers["x-content-type-options"], "nosniff");
    assert_eq!(
        a.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_lists_judge_the_resolved_client_address() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&config(
        &b,
        "[middlewares.office.ip_allow]\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.66.0.0/16\"]\n",
        &["office"],
    ))
    .await;
    let c = client();
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(
        send(&c, g.addr(), "GET", "h", "/", &from("10.1.2.3"))
            .await
            .unwrap()
            .status,
        200
    );
    let denied = send(&c, g.addr(), "GET", "h", "/", &from("10.66.0.9"))
        .await
        .unwrap();
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(
        send(&c, g.addr(), "GET", "h", "/", &from("192.0.2.1"))
            .await
            .unwrap()
            .status,
        403
    );
    // Loopback itself is not on the list.
    assert_eq!(get(&c, g.addr(), "h", "/").await.status, 403);
    assert_eq!(b.requests(), 1, "refused requests never reach the backend");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_lets_the_right_user_through_and_only_them() {
    let b = Backend::start("b", Behavior::Name).await;
    let declared = format!(
        "[middlewares.auth.basic_auth]\nrealm = \"ops\"\nusers = [\"alice:{}\", \"bob:{}\"]\nuser_header = \"X-Auth-User\"\n",
        bcrypt_hash("wonderland"),
        bcrypt_hash("builder")
    );
    let g = Gantry::start(&config(&b, &declared, &["auth"])).await;
    let c = client();
    let missing = get(&c, g.addr(), "h", "/").await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Basic realm=\"ops\"");
    for (user, password) in [("alice", "wrong"), ("nobody", "wonderland"), ("alice", "")] {
        let a = send(
            &c,
            g.addr(),
            "GET",
            "h",
            "/",
            &[("authorization", &basic(user, password))],
        )
        .await
        .unwrap();
        assert_eq!(a.status, 401, "{user}:{password}");
    }
    assert_eq!(b.requests(), 0);
    for _ in 0..3 {
        let a = send(
            &c,
            g.addr(),
            "GET",
            "h",
            "/",
            &[("authorization", &basic("alice", "wonderland"))],
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200);
        let seen = b.last().headers;
        assert!(
            !seen.contains_key("authorization"),
            "the credentials were forwarded"
        );
        assert_eq!(seen["x-auth-user"], "alice");
    }
    let bob = send(
        &c,
        g.addr(),
        "GET",
        "h",
        "/",
        &[("authorization", &basic("bob", "builder"))],
    )
    .await
    .unwrap();
    assert_eq!(
        (bob.status, &b.last().headers["x-auth-user"]),
        (200, &"bob".parse().unwrap())
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answers_429_to_the_excess_of_one_address_only() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&config(
        &b,
        "[middlewares.limit.rate_limit]\naverage = 50\nburst = 10\n",
        &["limit"],
    ))
    .await;
    let c = client();
    let started = Instant::now();
    let (mut ok, mut limited, mut retry_after) = (0u32, 0u32, None);
    for _ in 0..500 {
        let a = send(&c, g.addr(), "GET", "h", "/", &[("x-forwarded-for", "192.0.2.1")])
            .await
            .unwrap();
        match a.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                retry_after = a.headers.get("retry-after").cloned();
            }
            s => panic!("unexpected {s}: {}", a.body),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 10.0 + 50.0 * elapsed + 1.0;
    assert!(
        f64::from(ok) <= allowed,
        "{ok} admitted in {elapsed:.2}s; the limit allows {allowed:.0}"
    );
    assert!(ok >= 10, "the burst was not admitted: {ok}");
    assert_eq!(ok + limited, 500);
    assert_eq!(retry_after.unwrap(), "1");
    // Another address has its own bucket.
    let other = send(&c, g.addr(), "GET", "h", "/", &[("x-forwarded-for", "192.0.2.2")])
        .await
        .unwrap();
    assert_eq!(other.status, 200);
    let m = admin_get(g.running.admin_addr, "/metrics").await.body;
    let line = format!(
        "gantry_middleware_refusals_total{{middleware=\"limit\",reason=\"rate_limited\",router=\"web\"}} {limited}"
    );
    assert!(
        m.contains(&line),
        "missing {line} in\n{}",
        m.lines()
            .filter(|l| l.contains("middleware"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_naming_a_missing_middleware_answers_503_until_it_exists() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&config(&b, "", &["auth"])).await;
    let a = get(&client(), g.addr(), "h", "/").await;
    assert_eq!(a.status, 503);
    assert!(
        a.body.contains("router web") && a.body.contains("middleware \"auth\""),
        "{}",
        a.body
    );
    assert_eq!(b.requests(), 0, "a missing middleware must never mean none");
    let status = admin_json(g.running.admin_addr, "/api/v1/status")
        .await
        .to_string();
    assert!(status.contains("unknown middleware \\\"auth\\\""), "{status}");

    // Declared later (here: a reload), the router uses it.
    let declared = format!(
        "[middlewares.auth.basic_auth]\nusers = [\"alice:{}\"]\n",
        bcrypt_hash("wonderland")
    );
    g.reconfigure(&config(&b, &declared, &["auth"])).await;
    assert_eq!(get(&client(), g.addr(), "h", "/").await.status, 401);
    let routes = admin_json(g.running.admin_addr, "/api/v1/routes").await;
    assert_eq!(
        routes["routers"]["web"]["middlewares"],
        serde_json::json!(["auth"])
    );
    assert_eq!(
        routes["middlewares"]["auth"]["basic_auth"]["users"],
        serde_json::json!(["alice"])
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_middleware_is_refused_with_its_origin_and_the_last_good_table_serves() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&config(
        &b,
        "[middlewares.tag.headers]\nresponse = { set = { X-Tag = \"one\" } }\n",
        &["tag"],
    ))
    .await;
    assert_eq!(get(&client(), g.addr(), "h", "/").await.headers["x-tag"], "one");
    let before = g.running.generation();
    g.write_config(&config(
        &b,
        "[middlewares.tag.basic_auth]\nusers = [\"alice:plaintext-password\"]\n",
        &["tag"],
    ));
    let status = eventually(Duration::from_secs(10), "the bad file is reported", || async {
        let s = admin_json(g.running.admin_addr, "/api/v1/status")
            .await
            .to_string();
        s.contains("middlewares.tag.basic_auth.users[0]").then_some(s)
    })
    .await;
    assert!(status.contains("only bcrypt is accepted"), "{status}");
    assert!(
        !status.contains("plaintext-password"),
        "the password was echoed: {status}"
    );
    assert_eq!(g.running.generation(), before);
    assert_eq!(get(&client(), g.addr(), "h", "/").await.headers["x-tag"], "one");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_by_regex_and_to_https_answer_without_the_backend() {
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&format!(
        r#"
[routers.old]
hosts = ["old.test"]
service = "svc"
middlewares = ["moved"]
[routers.secure]
hosts = ["secure.test"]
service = "svc"
middlewares = ["to-https"]
[services.svc]
backends = [{{ url = "{}" }}]
[middlewares.moved.redirect]
regex = '^http://old\.test/docs/(.*)$'
replacement = "https://new.test/manual/${{1}}"
permanent = true
[middlewares.to-https.redirect]
scheme = "https"
"#,
        b.url()
    ))
    .await;
    let c = client();
    let moved = get(&c, g.addr(), "old.test", "/docs/intro?lang=en").await;
    assert_eq!(moved.status, 301);
    assert_eq!(moved.headers["location"], "https://new.test/manual/intro?lang=en");
    // Not matched by the regex: proxied.
    assert_eq!(get(&c, g.addr(), "old.test", "/other").await.status, 200);
    let post = send(&c, g.addr(), "POST", "secure.test:8080", "/form", &[])
        .await
        .unwrap();
    assert_eq!(post.status, 307, "a temporary redirect keeps the method");
    assert_eq!(post.headers["location"], "https://secure.test/form");
    assert_eq!(b.requests(), 1, "only the unmatched request reached the backend");
    g.running.shutdown().await;
}
