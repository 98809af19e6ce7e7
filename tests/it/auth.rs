//! Authentication middlewares against real services: `forward_auth` asking a real HTTP auth
//! service (allow, deny with its own answer, down, slow), and `basic_auth` reading an htpasswd
//! file (and refusing one with a plaintext entry at load).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::middleware::{basic, bcrypt_hash, config};
use crate::support::*;

/// What the auth service saw of the last sub-request.
#[derive(Clone, Debug, Default)]
struct Asked {
    method: String,
    uri: String,
    headers: http::HeaderMap,
}

/// A real auth service: `X-Token: good` is alice (200 with `X-Auth-User`), `X-Token: slow`
/// answers after 3 s, anything else is a 401 with a challenge and a body of its own.
struct AuthService {
    addr: SocketAddr,
    last: Arc<Mutex<Option<Asked>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl AuthService {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let last = Arc::new(Mutex::new(None));
        let seen = last.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stopped.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let seen = seen.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            *seen.lock().unwrap() = Some(Asked {
                                method: req.method().to_string(),
                                uri: req.uri().to_string(),
                                headers: req.headers().clone(),
                            });
                            let token = req.headers().get("x-token").map(|v| v.as_bytes().to_vec());
                            let resp = match token.as_deref() {
                                Some(b"good") => Response::builder()
                                    .header("x-auth-user", "alice")
                                    .header("x-auth-debug", "internal")
                                    .body(Full::new(Bytes::from_static(b"ok"))),
                                Some(b"slow") => {
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                    Response::builder().body(Full::new(Bytes::new()))
                                }
                                _ => Response::builder()
                                    .status(401)
                                    .header("www-authenticate", "Bearer realm=\"sso\"")
                                    .header("content-type", "text/plain")
                                    .body(Full::new(Bytes::from_static(b"log in at sso.test\n"))),
                            };
                            Ok::<_, Infallible>(resp.unwrap())
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        AuthService { addr, last, stop }
    }

    fn last(&self) -> Asked {
        self.last
            .lock()
            .unwrap()
            .clone()
            .expect("the auth service was asked")
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_lets_through_what_the_auth_service_allows_and_nothing_else() {
    let b = Backend::start("b", Behavior::Name).await;
    let auth = AuthService::start().await;
    let declared = format!(
        "[middlewares.sso.forward_auth]\naddress = \"http://{}/check\"\nresponse_headers = [\"X-Auth-User\"]\ntimeout = \"1s\"\n",
        auth.addr
    );
    let g = Gantry::start(&config(&b, &declared, &["sso"])).await;
    let c = client();

    // Allowed: the request reaches the backend with the auth service's header, and a header a
    // client sent to pose as someone is gone.
    let ok = send(
        &c,
        g.addr(),
        "POST",
        "app.test",
        "/orders?id=7",
        &[("x-token", "good"), ("x-auth-user", "mallory")],
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let seen = b.last().headers;
    assert_eq!(seen["x-auth-user"], "alice");
    assert_eq!(seen.get_all("x-auth-user").iter().count(), 1);
    assert!(
        !seen.contains_key("x-auth-debug"),
        "only the listed headers are copied"
    );
    let asked = auth.last();
    assert_eq!((asked.method.as_str(), asked.uri.as_str()), ("POST", "/check"));
    assert_eq!(asked.headers["x-forwarded-uri"], "/orders?id=7");
    assert_eq!(asked.headers["x-forwarded-method"], "POST");
    assert_eq!(asked.headers["x-forwarded-host"], "app.test");
    assert_eq!(asked.headers["x-token"], "good");

    // Denied: the client gets the auth service's answer, the backend nothing.
    let before = b.requests();
    let denied = send(&c, g.addr(), "GET", "app.test", "/", &[("x-token", "bad")])
        .await
        .unwrap();
    assert_eq!(denied.status, 401);
    assert_eq!(denied.body, "log in at sso.test\n");
    assert_eq!(denied.headers["www-authenticate"], "Bearer realm=\"sso\"");
    assert!(denied.headers.contains_key("x-request-id"));

    // Slow: 504 after the timeout.
    let slow = send(&c, g.addr(), "GET", "app.test", "/", &[("x-token", "slow")])
        .await
        .unwrap();
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert!(slow.body.contains("auth service"), "{}", slow.body);

    // Down: 502, never through.
    drop(auth);
    let down = eventually(Duration::from_secs(5), "the auth service is gone", || async {
        let a = send(
            &client(),
            g.addr(),
            "GET",
            "app.test",
            "/",
            &[("x-token", "good")],
        )
        .await
        .unwrap();
        (a.status != 200).then_some(a)
    })
    .await;
    assert_eq!(down.status, 502, "{}", down.body);
    assert_eq!(
        b.requests(),
        before,
        "a refused or unanswered request reached the backend"
    );
    g.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_reads_an_htpasswd_file_and_refuses_one_with_plaintext() {
    let b = Backend::start("b", Behavior::Name).await;
    let htpasswd = format!(
        "# ops team\nalice:{}\n\nbob:{}\n",
        bcrypt_hash("wonderland"),
        bcrypt_hash("builder")
    );
    let declared = "[middlewares.auth.basic_auth]\nusers_file = \"users.htpasswd\"\n";
    let g =
        Gantry::start_with_files(&config(&b, declared, &["auth"]), &[("users.htpasswd", &htpasswd)]).await;
    let c = client();
    assert_eq!(get(&c, g.addr(), "h", "/").await.status, 401);
    for (user, password, status) in [
        ("alice", "wonderland", 200),
        ("bob", "builder", 200),
        ("bob", "wonderland", 401),
    ] {
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
        assert_eq!(a.status, status, "{user}:{password}");
    }

    // The same file with a plaintext entry: `gantry check` refuses it, naming file and line.
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        bad_dir.path().join("users.htpasswd"),
        format!("alice:{}\ncarol:hunter2\n", bcrypt_hash("wonderland")),
    )
    .unwrap();
    let path = bad_dir.path().join("gantry.toml");
    std::fs::write(&path, config(&b, declared, &["auth"])).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("middlewares.auth.basic_auth.users_file (users.htpasswd line 2)")
            && stderr.contains("user \"carol\": not a bcrypt hash"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password was echoed: {stderr}");
    g.running.shutdown().await;
}
