//! `gantry demo`: built-in backends and an embedded config, so a newcomer sees routing and
//! balancing work with nothing else installed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gantry_config::file::{ValidatedFile, load};
use http::{Response, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A built-in backend: answers every request with its name, version and the request line.
/// `gantry demo` runs several; `gantry backend` runs one (in test containers).
#[derive(Debug, Clone)]
pub struct DemoBackend {
    pub name: String,
    pub version: String,
    /// Added to every answer, to show least-request steering away from slow backends.
    pub delay: Duration,
    /// `GET /health` answers 503 until this instant, then 200.
    pub unhealthy_until: Option<std::time::Instant>,
}

impl DemoBackend {
    /// Binds 127.0.0.1 on a free port and serves until `shutdown`.
    pub async fn spawn(self, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        self.serve(listener, shutdown, tokio_util::task::TaskTracker::new())
    }

    /// Serves on `listener` until `shutdown`: then it accepts no more connections, and each
    /// connection ends gracefully (the request in flight is answered, an idle keep-alive
    /// connection is closed); `connections` tracks them, to wait for them before exiting.
    pub fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        connections: tokio_util::task::TaskTracker,
    ) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let me = self.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            if req.uri().path() == "/health" {
                                let ok = me.unhealthy_until.is_none_or(|t| std::time::Instant::now() >= t);
                                let mut r = Response::new(Full::new(Bytes::from(if ok {
                                    "ok\n"
                                } else {
                                    "starting\n"
                                })));
                                if !ok {
                                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                }
                                return Ok::<_, Infallible>(r);
                            }
                            if !me.delay.is_zero() {
                                tokio::time::sleep(me.delay).await;
                            }
                            let body = format!(
                                "{} ({}) answered {} {}\n",
                                me.name,
                                me.version,
                                req.method(),
                                req.uri().path()
                            );
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                header::HeaderValue::from_static("text/plain; charset=utf-8"),
                            );
                            if let Ok(v) = header::HeaderValue::from_str(&me.name) {
                                r.headers_mut().insert("x-backend", v);
                            }
                            if let Ok(v) = header::HeaderValue::from_str(&me.version) {
                                r.headers_mut().insert("x-version", v);
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        Ok(addr)
    }
}

/// Starts the demo backends and returns the embedded config that routes to them.
pub async fn backends_and_config(shutdown: CancellationToken) -> std::io::Result<ValidatedFile> {
    let spawn = |name: &str, version: &str, delay_ms| {
        DemoBackend {
            name: name.to_string(),
            version: version.to_string(),
            delay: Duration::from_millis(delay_ms),
            unhealthy_until: None,
        }
        .spawn(shutdown.clone())
    };
    let web1 = spawn("web-1", "v1", 0).await?;
    let web2 = spawn("web-2", "v1", 0).await?;
    let web3 = spawn("web-3", "v1", 0).await?;
    let api1 = spawn("api-1", "v1", 0).await?;
    let api2 = spawn("api-2", "v1", 50).await?;
    let blog = spawn("blog-1", "v1", 0).await?;
    let shop1 = spawn("shop-1", "v1", 0).await?;
    let shop2 = spawn("shop-2", "v1", 0).await?;
    let shop3 = spawn("shop-3", "v2", 0).await?;
    let slow = spawn("slow-1", "v1", 100).await?;
    // The demo's one user, demo:demo (cost 5: a demo, not a vault).
    let demo_hash = bcrypt::hash("demo", 5).map_err(std::io::Error::other)?;
    let text = format!(
        r#"
[entrypoints.web]
address = "127.0.0.1:8080"

[admin]
address = "127.0.0.1:8081"

# Requests for 127.0.0.1 or localhost: weighted round robin over three backends, 3:1:1.
[routers.web]
hosts = ["127.0.0.1", "localhost"]
service = "web"

# Routing by host.
[routers.blog]
hosts = ["blog.localhost"]
service = "blog"

# /api/... on any host goes to the api service with /api stripped; least-request avoids the slow api-2.
[routers.api]
path_prefix = "/api/"
strip_prefix = true
service = "api"

# Consistent hashing on a header: the same user always reaches the same backend.
[routers.sticky]
path_prefix = "/sticky"
service = "sticky"

# A canary: shop v2 takes 5% of the traffic. A user (cookie uid) stays on the version they got;
# `X-Canary: always` or the cookie `version=v2` reaches v2 whatever the weights.
[routers.shop]
hosts = ["127.0.0.1", "localhost"]
path_prefix = "/shop"
service = "shop"

[services.shop]
versions = {{ v1 = 95, v2 = 5 }}
backends = [
  {{ url = "http://{shop1}", version = "v1" }},
  {{ url = "http://{shop2}", version = "v1" }},
  {{ url = "http://{shop3}", version = "v2" }},
]

[services.shop.canary]
stable = "v1"
sticky = "cookie:uid"
overrides = [
  {{ on = "header:X-Canary", value = "always", version = "v2" }},
  {{ on = "cookie:version" }},
]

[services.web]
backends = [
  {{ url = "http://{web1}", weight = 3 }},
  {{ url = "http://{web2}", weight = 1 }},
  {{ url = "http://{web3}", weight = 1 }},
]

[services.blog]
backends = [{{ url = "http://{blog}" }}]

[services.api]
policy = "least_request"
backends = [{{ url = "http://{api1}" }}, {{ url = "http://{api2}" }}]

# A replica recommendation from the concurrency Gantry sees (slow-1 answers after 100 ms): 2 in
# flight per replica, between 1 and 8, over a 20 s window.
[routers.slow]
hosts = ["127.0.0.1", "localhost"]
path_prefix = "/slow"
service = "slow"

[services.slow]
backends = [{{ url = "http://{slow}" }}]
scale = {{ min = 1, max = 8, target = 2, utilization = 1.0, window = "20s" }}

# Middlewares: /private is behind a rate limit (5/s, burst 5), basic auth (demo:demo), the
# security headers and compression, in that order.
[routers.private]
hosts = ["127.0.0.1", "localhost"]
path_prefix = "/private"
service = "web"
middlewares = ["private-limit", "private-auth", "secure", "squeeze"]

[middlewares.private-limit.rate_limit]
average = 5
burst = 5

[middlewares.private-auth.basic_auth]
realm = "demo"
users = ["demo:{demo_hash}"]
user_header = "X-Auth-User"

[middlewares.secure.headers]
security = true

[middlewares.squeeze.compress]
min_bytes = 0

[services.sticky]
policy = "hash"
hash_on = "header:X-User"
backends = [{{ url = "http://{web1}" }}, {{ url = "http://{web2}" }}, {{ url = "http://{web3}" }}]
"#
    );
    load(&text, "embedded demo config").map_err(|e| std::io::Error::other(e.to_string()))
}

/// What to try, printed at start.
pub fn instructions(proxy: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"Gantry demo: proxy on http://{proxy}, admin on http://{admin}

Try:
  # weighted round robin, 3:1:1 over web-1, web-2, web-3
  for i in 1 2 3 4 5; do curl -s http://{proxy}/; done
  # routing by host
  curl -s -H 'Host: blog.localhost' http://{proxy}/
  # /api prefix stripped, least-request prefers the fast api-1 over api-2 (+50 ms)
  curl -s http://{proxy}/api/users
  # consistent hashing on X-User: alice always reaches the same backend
  curl -s -H 'X-User: alice' http://{proxy}/sticky
  # no route for this host -> 404 from Gantry
  curl -s -H 'Host: nowhere.invalid' http://{proxy}/
  # a canary: /shop is 95% v1, 5% v2; a tester pins v2, a user (cookie uid) stays put
  for i in $(seq 20); do curl -s http://{proxy}/shop/; done | sort | uniq -c
  curl -s -H 'X-Canary: always' http://{proxy}/shop/
  curl -s -b uid=alice http://{proxy}/shop/
  # a progressive rollout of v2, gated on Gantry's own figures (token: see the log line above)
  curl -s -H "Authorization: Bearer $TOKEN" -X POST http://{admin}/api/v1/rollouts/shop \
       -d '{{"stable": "v1", "canary": "v2", "steps": [10, 50, 100], "step_time": "5s", "min_requests": 20}}'
  for i in $(seq 400); do curl -s http://{proxy}/shop/ >/dev/null; sleep 0.05; done
  curl -s http://{admin}/api/v1/rollouts
  # scaling: 8 clients at once on /slow (100 ms answers); the recommendation rises to 4 within
  # seconds, and comes back down once a whole 20 s window agrees
  for c in $(seq 8); do (for i in $(seq 100); do curl -s http://{proxy}/slow >/dev/null; done) & done
  curl -s http://{admin}/api/v1/scaling
  # middlewares: /private wants demo:demo (401 without), adds security headers, and allows
  # 5 requests a second (429 beyond)
  curl -si http://{proxy}/private | head -1
  curl -si -u demo:demo http://{proxy}/private | grep -i -e ^HTTP -e x-frame-options
  curl -s --compressed -u demo:demo -D - -o /dev/null http://{proxy}/private | grep -i content-encoding
  for i in $(seq 10); do curl -s -o /dev/null -w '%{{http_code}} ' -u demo:demo http://{proxy}/private; done; echo
  # the live routing table and metrics
  curl -s http://{admin}/api/v1/routes
  curl -s http://{admin}/metrics | grep gantry_requests_total

Stop with Ctrl-C.
"#
    )
}
