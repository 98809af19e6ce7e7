//! Shadow traffic: a service mirrors a share of its requests to one of its versions. Users get
//! their answers from the version they were placed on, whatever the copies get; the copies are
//! counted in `gantry_mirror_*`; bodies are copied up to a limit; the copies in flight are
//! bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;

use crate::support::{Backend, Behavior, Gantry, TestBody, admin_get, client, eventually, send};

fn config(v1: &Backend, v2: &Backend, mirror: &str) -> String {
    format!(
        "[routers.web]\npath_prefix = \"/\"\nservice = \"web\"\n\n[services.web]\nversions = {{ v1 = 100, v2 = 0 }}\nbackends = [{{ url = \"{}\", version = \"v1\" }}, {{ url = \"{}\", version = \"v2\" }}]\n\n[services.web.mirror]\nversion = \"v2\"\n{mirror}\n",
        v1.url(),
        v2.url()
    )
}

/// The value of the first metric line starting with `prefix` (0 when there is none).
async fn metric(admin: SocketAddr, prefix: &str) -> u64 {
    let m = admin_get(admin, "/metrics").await.body;
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Copies mirrored to v2 and answered with status class `class`.
async fn copies(admin: SocketAddr, class: &str) -> u64 {
    metric(
        admin,
        &format!(r#"gantry_mirror_requests_total{{code="{class}",service="web",version="v2"}}"#),
    )
    .await
}

async fn post(addr: SocketAddr, body: String) -> u16 {
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/"))
        .header("host", "app.test")
        .body(TestBody::full(body))
        .unwrap();
    client().request(req).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_the_requests_are_copied_to_a_failing_version_and_users_see_none_of_it() {
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Status(500)).await;
    let g = Gantry::start(&config(&v1, &v2, "percent = 50")).await;
    let (addr, admin) = (g.addr(), g.running.admin_addr);
    let c = client();
    for _ in 0..400 {
        let a = send(&c, addr, "GET", "app.test", "/", &[]).await.unwrap();
        assert_eq!((a.status, a.backend()), (200, "v1-a"), "{a:?}");
    }
    // About half were copied (400 draws at 50%: 140..260 is over 6 standard deviations wide).
    let copies = eventually(Duration::from_secs(10), "the copies to be answered", || async {
        let n = copies(admin, "5xx").await;
        (n > 0 && n == v2.requests()).then_some(n)
    })
    .await;
    assert!((140..=260).contains(&copies), "{copies} of 400 copied");
    assert_eq!(v1.requests(), 400);
    assert_eq!(v2.last().headers["x-gantry-mirror"], "1");
    // The copies count as neither v2's live answers nor the users'.
    assert_eq!(
        metric(
            admin,
            r#"gantry_version_requests_total{code="5xx",service="web",version="v2"}"#
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_copied_whole_up_to_the_limit() {
    let v1 = Backend::start("v1-a", Behavior::CountBody).await;
    // Answers once it has read the whole body: a copy with a short or long body would fail.
    let v2 = Backend::start("v2-a", Behavior::CountBody).await;
    let g = Gantry::start(&config(
        &v1,
        &v2,
        "percent = 100\nnon_idempotent = true\nmax_body = \"16KiB\"",
    ))
    .await;
    let (addr, admin) = (g.addr(), g.running.admin_addr);
    for _ in 0..20 {
        assert_eq!(post(addr, "a".repeat(10_000)).await, 200);
    }
    for _ in 0..5 {
        assert_eq!(post(addr, "b".repeat(20_000)).await, 200);
    }
    eventually(
        Duration::from_secs(10),
        "20 copies answered, 5 dropped",
        || async {
            let ok = copies(admin, "2xx").await;
            let big = metric(
                admin,
                r#"gantry_mirror_dropped_total{reason="body_too_large",service="web"}"#,
            )
            .await;
            (ok == 20 && big == 5).then_some(())
        },
    )
    .await;
    assert_eq!(v2.requests(), 20);
    assert_eq!(copies(admin, "5xx").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_in_flight_are_bounded_and_never_hold_a_user_up() {
    let v1 = Backend::start("v1-a", Behavior::Name).await;
    let v2 = Backend::start("v2-a", Behavior::Delay(Duration::from_secs(3))).await;
    let g = Gantry::start(&config(&v1, &v2, "percent = 100\nmax_in_flight = 2")).await;
    let (addr, admin) = (g.addr(), g.running.admin_addr);
    let c = client();
    let start = Instant::now();
    for _ in 0..10 {
        let a = send(&c, addr, "GET", "app.test", "/", &[]).await.unwrap();
        assert_eq!(a.backend(), "v1-a");
    }
    // Every user was answered while the first copies were still waiting on v2.
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert_eq!(
        metric(
            admin,
            r#"gantry_mirror_dropped_total{reason="busy",service="web"}"#
        )
        .await,
        8
    );
    eventually(
        Duration::from_secs(10),
        "the two copies to be answered",
        || async {
            let n = copies(admin, "2xx").await;
            (n == 2).then_some(())
        },
    )
    .await;
    assert_eq!(v2.max_in_flight(), 2);
    // Not idempotent: not copied (unless the mirror says so). Were the POSTs copied, two copies
    // would hold both slots for 3 s and the GET's copy after them would be dropped.
    for _ in 0..5 {
        assert_eq!(post(addr, "x".repeat(100)).await, 200);
    }
    send(&c, addr, "GET", "app.test", "/", &[]).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the GET's copy to be answered",
        || async {
            let n = copies(admin, "2xx").await;
            (n == 3).then_some(())
        },
    )
    .await;
    assert_eq!((v2.requests(), v2.last().method.as_str()), (3, "GET"));
    assert_eq!(
        metric(
            admin,
            r#"gantry_mirror_dropped_total{reason="busy",service="web"}"#
        )
        .await,
        8
    );
}
