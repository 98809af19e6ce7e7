//! The three balancing policies, observed from the client side over real backends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// Sends `n` requests from `workers` concurrent keep-alive clients; returns hits per backend.
async fn spread(
    addr: std::net::SocketAddr,
    n: usize,
    workers: usize,
    headers: Vec<(String, String)>,
) -> HashMap<String, usize> {
    let c = client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let c = c.clone();
        let next = next.clone();
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut hits: HashMap<String, usize> = HashMap::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let a = send(&c, addr, "GET", "h", "/", &h).await.unwrap();
                assert_eq!(a.status, 200, "{}", a.body);
                *hits.entry(a.backend().to_string()).or_default() += 1;
            }
            hits
        }));
    }
    let mut total = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights_and_weight_zero_gets_nothing() {
    let a = Backend::start("a", Behavior::Name).await;
    let b = Backend::start("b", Behavior::Name).await;
    let c = Backend::start("c", Behavior::Name).await;
    let z = Backend::start("z", Behavior::Name).await;
    let g = Gantry::start(&one_service(&[(&a, 5), (&b, 3), (&c, 2), (&z, 0)], "")).await;
    let hits = spread(g.addr(), 10_000, 8, vec![]).await;
    for (name, share) in [("a", 0.5), ("b", 0.3), ("c", 0.2)] {
        let got = hits.get(name).copied().unwrap_or(0) as f64 / 10_000.0;
        assert!((got - share).abs() < 0.01, "{name}: {got} vs {share} ({hits:?})");
    }
    assert_eq!(z.requests(), 0, "a weight-0 backend must get nothing");
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_away_from_a_ten_times_slower_backend() {
    let fast = Backend::start("fast", Behavior::Delay(Duration::from_millis(5))).await;
    let slow = Backend::start("slow", Behavior::Delay(Duration::from_millis(50))).await;
    let g = Gantry::start(&one_service(
        &[(&fast, 1), (&slow, 1)],
        "policy = \"least_request\"",
    ))
    .await;
    let hits = spread(g.addr(), 600, 6, vec![]).await;
    let slow_share = hits.get("slow").copied().unwrap_or(0) as f64 / 600.0;
    // Round robin would give it 50%.
    assert!(
        slow_share < 0.2,
        "slow backend got {slow_share} of the traffic ({hits:?})"
    );
    assert!(hits.get("fast").copied().unwrap_or(0) > 0);
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_keys_and_a_fifth_backend_moves_about_a_fifth() {
    let mut bs = Vec::new();
    for i in 0..5 {
        bs.push(Backend::start(&format!("b{i}"), Behavior::Name).await);
    }
    let four: Vec<(&Backend, u32)> = bs[..4].iter().map(|b| (b, 1)).collect();
    let five: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let policy = "policy = \"hash\"\nhash_on = \"header:X-User\"";
    let g = Gantry::start(&one_service(&four, policy)).await;
    let c = client();
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let mut placed = HashMap::new();
    for u in &users {
        let a = send(&c, g.addr(), "GET", "h", "/", &[("x-user", u)])
            .await
            .unwrap();
        placed.insert(u.clone(), a.backend().to_string());
    }
    // Same key, same backend.
    for u in users.iter().take(200) {
        let a = send(&c, g.addr(), "GET", "h", "/", &[("x-user", u)])
            .await
            .unwrap();
        assert_eq!(a.backend(), placed[u], "{u} moved without any change");
    }
    g.reconfigure(&one_service(&five, policy)).await;
    let mut moved = 0;
    for u in &users {
        let a = send(&c, g.addr(), "GET", "h", "/", &[("x-user", u)])
            .await
            .unwrap();
        if a.backend() != placed[u] {
            moved += 1;
            assert_eq!(a.backend(), "b4", "{u} moved between backends that stayed");
        }
    }
    let share = moved as f64 / users.len() as f64;
    assert!(
        (0.1..=0.3).contains(&share),
        "adding a fifth backend moved {share} of the keys"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_on_cookie_and_client_ip() {
    let a = Backend::start("a", Behavior::Name).await;
    let b = Backend::start("b", Behavior::Name).await;
    let g = Gantry::start(&one_service(
        &[(&a, 1), (&b, 1)],
        "policy = \"hash\"\nhash_on = \"cookie:sid\"",
    ))
    .await;
    let c = client();
    for sid in ["x", "y", "z", "w"] {
        let cookie = format!("theme=dark; sid={sid}");
        let first = send(&c, g.addr(), "GET", "h", "/", &[("cookie", &cookie)])
            .await
            .unwrap();
        for _ in 0..5 {
            let again = send(&c, g.addr(), "GET", "h", "/", &[("cookie", &cookie)])
                .await
                .unwrap();
            assert_eq!(again.backend(), first.backend());
        }
    }
    g.reconfigure(&one_service(
        &[(&a, 1), (&b, 1)],
        "policy = \"hash\"\nhash_on = \"client_ip\"",
    ))
    .await;
    let first = get(&c, g.addr(), "h", "/").await;
    for _ in 0..20 {
        assert_eq!(get(&c, g.addr(), "h", "/").await.backend(), first.backend());
    }
    g.running.shutdown().await;
}

/// Sticky sessions (`sticky = {}`): the first answer sets a cookie naming its backend, later
/// requests with it stay there and get no new cookie; a cookie naming no backend, or one that
/// stopped answering, is replaced along with the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_keeps_a_client_on_its_backend_until_that_backend_goes() {
    let backends = [
        Backend::start("a", Behavior::Name).await,
        Backend::start("b", Behavior::Name).await,
        Backend::start("c", Behavior::Name).await,
    ];
    let g = Gantry::start(&one_service(
        &[(&backends[0], 1), (&backends[1], 1), (&backends[2], 1)],
        "sticky = { secure = true }\nretries = { attempts = 2 }",
    ))
    .await;
    let c = client();
    let set_cookie = |a: &Answer| {
        a.headers
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let first = get(&c, g.addr(), "h", "/").await;
    let set = set_cookie(&first).expect("the first answer sets the cookie");
    let (pair, attrs) = set.split_once(';').unwrap();
    assert!(pair.starts_with("gantry_sticky="), "{set}");
    assert_eq!(attrs, " Path=/; Secure; HttpOnly; SameSite=Lax");
    // Round robin alone would spread these over all three.
    for _ in 0..30 {
        let again = send(
            &c,
            g.addr(),
            "GET",
            "h",
            "/",
            &[("cookie", &format!("theme=dark; {pair}"))],
        )
        .await
        .unwrap();
        assert_eq!(again.backend(), first.backend());
        assert_eq!(set_cookie(&again), None, "the cookie already names it");
    }
    // A cookie that names no backend is replaced.
    let stranger = send(
        &c,
        g.addr(),
        "GET",
        "h",
        "/",
        &[("cookie", "gantry_sticky=0123456789abcdef")],
    )
    .await
    .unwrap();
    assert_eq!(stranger.status, 200);
    assert!(set_cookie(&stranger).is_some_and(|s| s.starts_with("gantry_sticky=")));
    // Its backend stops: the client moves, with a cookie naming the new one.
    let chosen = backends.iter().find(|b| b.name == first.backend()).unwrap();
    chosen.stop();
    let moved = send(&c, g.addr(), "GET", "h", "/", &[("cookie", pair)])
        .await
        .unwrap();
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_ne!(moved.backend(), first.backend());
    let new_pair = set_cookie(&moved)
        .expect("a new cookie")
        .split_once(';')
        .unwrap()
        .0
        .to_string();
    assert_ne!(new_pair, pair);
    for _ in 0..10 {
        let again = send(&c, g.addr(), "GET", "h", "/", &[("cookie", &new_pair)])
            .await
            .unwrap();
        assert_eq!(again.backend(), moved.backend());
    }
    g.running.shutdown().await;
}
