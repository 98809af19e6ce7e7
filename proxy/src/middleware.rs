//! Middlewares on the request path: each router's chain, compiled when its snapshot is built
//! (header names parsed, limiters made), run in the declared order after routing and before a
//! backend is picked. A router without middlewares has no chain and pays one `None` check.
//!
//! A router naming a middleware that no source declares answers 503 until it exists: a missing
//! `basic_auth` must never mean "no authentication".

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_config::middleware::{
    BasicAuth, Compress, Cors, Encoding, ErrorPages, HeaderEdits, IpAllow, Middleware, RateKey, RateLimit,
    Redirect, RedirectTarget,
};
use http::response::Parts;

use crate::compress;
use crate::forward_auth::AuthClient;
use crate::response::ResponseBody;
use gantry_config::routing::UsedMiddleware;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::clock::nanos_since_epoch;
use crate::error::ProxyError;

/// One router's middlewares, in order.
#[derive(Debug)]
pub struct Chain {
    missing: Option<Arc<str>>,
    /// Each step with the middleware's name.
    steps: Box<[(Arc<str>, Step)]>,
    /// Every `headers` middleware's response edits, in order.
    response: Box<[Edits]>,
    /// The first `compress` middleware.
    compress: Option<Compress>,
    /// The first CORS rule (of a `headers` middleware).
    cors: Option<Arc<Cors>>,
    /// Every `errors` middleware, in order: the first that covers a status gives its page.
    errors: Box<[ErrorPages]>,
}

/// What the request side decided for the response: the coding to compress it with, if it
/// turns out to be compressible, and the CORS origin to allow.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    encoding: Option<Encoding>,
    cors_origin: Option<HeaderValue>,
}

/// What a redirect needs to know of the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    pub scheme: &'a str,
    /// As the request named it (`host[:port]`).
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub method: &'a http::Method,
}

#[derive(Debug)]
enum Step {
    Redirect(Redirector),
    IpAllow(IpAllow),
    BasicAuth(Arc<Auth>),
    RateLimit(Limiter),
    Headers(Edits),
    Cors(Arc<Cors>),
    ForwardAuth(AuthClient),
}

impl Chain {
    /// The chain of a router with these middlewares. `previous` is the router's chain in the
    /// snapshot being replaced: a rate limit that did not change keeps its buckets, so that a
    /// route rebuilt for another reason (its service scaled, another middleware edited) does
    /// not hand every client a fresh burst.
    pub fn new(middlewares: &[UsedMiddleware], previous: Option<&Chain>) -> Option<Self> {
        if middlewares.is_empty() {
            return None;
        }
        let missing = middlewares
            .iter()
            .find(|(_, m)| m.is_none())
            .map(|(name, _)| name.clone());
        let mut steps = Vec::new();
        let mut response = Vec::new();
        let mut compress = None;
        let mut cors = None;
        let mut errors = Vec::new();
        for (name, m) in middlewares
            .iter()
            .filter_map(|(n, m)| Some((n.clone(), m.as_deref()?)))
        {
            let step = match m {
                Middleware::IpAllow(a) => Step::IpAllow(a.clone()),
                Middleware::BasicAuth(b) => Step::BasicAuth(Arc::new(Auth::new(b))),
                Middleware::RateLimit(r) => {
                    let kept = previous.and_then(|p| {
                        p.steps.iter().find_map(|(n, step)| match step {
                            Step::RateLimit(l) if *n == name && l.spec == *r => Some(l.keys.clone()),
                            _ => None,
                        })
                    });
                    Step::RateLimit(Limiter::new(r, kept))
                }
                Middleware::Headers(h) => {
                    response.push(Edits::new(&h.response));
                    if let Some(c) = &h.cors {
                        let c = Arc::new(c.clone());
                        cors.get_or_insert_with(|| c.clone());
                        steps.push((name.clone(), Step::Cors(c)));
                    }
                    Step::Headers(Edits::new(&h.request))
                }
                Middleware::ForwardAuth(f) => match AuthClient::new(f) {
                    Some(a) => Step::ForwardAuth(a),
                    None => continue,
                },
                Middleware::Errors(e) => {
                    errors.push(e.clone());
                    continue;
                }
                Middleware::Compress(c) => {
                    compress.get_or_insert_with(|| c.clone());
                    continue;
                }
                Middleware::Redirect(r) => match Redirector::new(r) {
                    Some(r) => Step::Redirect(r),
                    None => continue,
                },
            };
            steps.push((name, step));
        }
        Some(Chain {
            missing,
            steps: steps.into(),
            response: response.into(),
            compress,
            cors,
            errors: errors.into(),
        })
    }

    pub fn has_error_pages(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The error pages for a response with this status, if a middleware covers it.
    #[inline]
    pub fn error_pages(&self, status: u16) -> Option<&ErrorPages> {
        self.errors.iter().find(|e| e.covers(status))
    }

    /// Runs the request side of every middleware in order; the first refusal ends the request
    /// (with the name of the middleware that refused).
    pub async fn request(
        &self,
        router: &Arc<str>,
        headers: &mut HeaderMap,
        client_ip: IpAddr,
        line: RequestLine<'_>,
    ) -> Result<Plan, (Arc<str>, ProxyError)> {
        let head = line.method == http::Method::HEAD;
        if let Some(m) = &self.missing {
            let e = ProxyError::MissingMiddleware {
                router: router.clone(),
                middleware: m.clone(),
            };
            return Err((m.clone(), e));
        }
        let mut cors_origin = None;
        for (name, step) in self.steps.iter() {
            let verdict = match step {
                Step::Cors(c) => match crate::cors::check(c, headers, line.method) {
                    Ok(origin) => {
                        cors_origin = origin;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Step::ForwardAuth(a) => a.check(headers, client_ip, &line).await,
                Step::Redirect(r) => match r.answer(&line) {
                    Some(e) => Err(e),
                    None => Ok(()),
                },
                Step::IpAllow(a) => {
                    if a.permits(client_ip) {
                        Ok(())
                    } else {
                        Err(ProxyError::Forbidden)
                    }
                }
                Step::BasicAuth(auth) => auth.clone().check(headers).await,
                Step::RateLimit(l) => l.admit(headers, client_ip, Instant::now()),
                Step::Headers(e) => {
                    e.apply(headers);
                    Ok(())
                }
            };
            verdict.map_err(|e| (name.clone(), e))?;
        }
        let encoding = match &self.compress {
            Some(c) if !head => compress::negotiate(headers.get(header::ACCEPT_ENCODING), &c.encodings),
            _ => None,
        };
        Ok(Plan {
            encoding,
            cors_origin,
        })
    }

    /// Applies the response edits, and compression when planned and the response allows it.
    pub fn response(&self, parts: &mut Parts, body: ResponseBody, plan: Plan) -> ResponseBody {
        for e in self.response.iter() {
            e.apply(&mut parts.headers);
        }
        if let Some(c) = &self.cors {
            crate::cors::respond(c, &mut parts.headers, plan.cors_origin);
        }
        match &self.compress {
            Some(c) if compress::compressible(c, parts) => {
                compress::set_headers(&mut parts.headers, plan.encoding);
                match plan.encoding {
                    Some(e) => body.encoded(e),
                    None => body,
                }
            }
            _ => body,
        }
    }
}

/// A `redirect` middleware, its regex compiled.
#[derive(Debug)]
struct Redirector {
    target: Target,
    permanent: bool,
}

#[derive(Debug)]
enum Target {
    Regex(regex::Regex, String),
    Scheme(String, Option<u16>),
}

impl Redirector {
    fn new(r: &Redirect) -> Option<Self> {
        let target = match &r.target {
            RedirectTarget::Regex { regex, replacement } => Target::Regex(
                regex::RegexBuilder::new(regex).size_limit(1 << 20).build().ok()?,
                replacement.clone(),
            ),
            RedirectTarget::Scheme { scheme, port } => Target::Scheme(scheme.clone(), *port),
        };
        Some(Redirector {
            target,
            permanent: r.permanent,
        })
    }

    /// The redirect for this request, if it is one to redirect.
    fn answer(&self, l: &RequestLine<'_>) -> Option<ProxyError> {
        let location = match &self.target {
            Target::Regex(re, replacement) => {
                let url = format!("{}://{}{}", l.scheme, l.host, l.path_and_query);
                if !re.is_match(&url) {
                    return None;
                }
                re.replace(&url, replacement.as_str()).into_owned()
            }
            Target::Scheme(scheme, port) => {
                if l.scheme == scheme {
                    return None;
                }
                on_scheme(scheme, host_without_port(l.host), *port, l.path_and_query)
            }
        };
        let safe = matches!(*l.method, http::Method::GET | http::Method::HEAD);
        let status = match (self.permanent, safe) {
            (true, true) => http::StatusCode::MOVED_PERMANENTLY,
            (true, false) => http::StatusCode::PERMANENT_REDIRECT,
            (false, true) => http::StatusCode::FOUND,
            (false, false) => http::StatusCode::TEMPORARY_REDIRECT,
        };
        // A replacement that makes no valid header value is no redirect (and no crash).
        let location = HeaderValue::from_str(&location).ok()?;
        Some(ProxyError::Redirect(status, location))
    }
}

/// The same resource on another scheme: `scheme://host[:port]/path?query`, the port left out
/// when it is the scheme's default. Routers' `redirect_https` use it too.
pub(crate) fn on_scheme(scheme: &str, host: &str, port: Option<u16>, path_and_query: &str) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    match port.filter(|&p| p != default) {
        Some(p) => format!("{scheme}://{host}:{p}{path_and_query}"),
        None => format!("{scheme}://{host}{path_and_query}"),
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:8080` -> `[::1]`.
fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

/// Header edits with names and values parsed (validated when the config was).
#[derive(Debug, Default)]
struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Edits {
    fn new(e: &HeaderEdits) -> Self {
        let pair = |(n, v): (&String, &String)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        };
        Edits {
            remove: e
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: e.set.iter().filter_map(pair).collect(),
            add: e.add.iter().filter_map(pair).collect(),
        }
    }

    fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

/// Basic authentication. bcrypt is slow on purpose (tens of milliseconds), so it runs on the
/// blocking pool, and credentials that passed are remembered by their SHA-256 digest (never in
/// clear) so that a browser sending them on every request costs one bcrypt, not one each.
#[derive(Debug)]
struct Auth {
    realm: Arc<str>,
    users: HashMap<String, String>,
    remove_header: bool,
    user_header: Option<HeaderName>,
    passed: Mutex<HashMap<[u8; 32], String>>,
    /// Verified against when the user is unknown, so that an unknown user takes as long to
    /// refuse as a wrong password: a hash of the first user's cost, made on first need.
    dummy: std::sync::OnceLock<String>,
    cost: u32,
}

/// Remembered credentials at most; the memory is cleared when full.
const MAX_PASSED: usize = 1024;

impl Auth {
    fn new(b: &BasicAuth) -> Self {
        Auth {
            realm: Arc::from(b.realm.as_str()),
            users: b.users.clone().into_iter().collect(),
            remove_header: b.remove_header,
            user_header: b
                .user_header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            passed: Mutex::new(HashMap::new()),
            dummy: std::sync::OnceLock::new(),
            // `$2y$10$...`: the cost is the second field.
            cost: b
                .users
                .values()
                .next()
                .and_then(|h| h.split('$').nth(2))
                .and_then(|c| c.parse().ok())
                .unwrap_or(bcrypt::DEFAULT_COST),
        }
    }

    async fn check(self: Arc<Self>, headers: &mut HeaderMap) -> Result<(), ProxyError> {
        let refuse = || ProxyError::Unauthorized(self.realm.clone());
        let (user, password) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| basic_credentials(v.as_bytes()))
            .ok_or_else(refuse)?;
        let digest = credentials_digest(&user, &password);
        let remembered = self
            .passed
            .lock()
            .ok()
            .and_then(|p| p.get(&digest).cloned())
            .is_some_and(|u| u == user);
        if !remembered {
            let hash = self.users.get(&user).cloned();
            let me = self.clone();
            let ok = tokio::task::spawn_blocking(move || match &hash {
                Some(h) => bcrypt::verify(&password, h).unwrap_or(false),
                None => {
                    let dummy = me
                        .dummy
                        .get_or_init(|| bcrypt::hash("gantry", me.cost).unwrap_or_default());
                    let _ = bcrypt::verify(&password, dummy);
                    false
                }
            })
            .await
            .unwrap_or(false);
            if !ok {
                return Err(refuse());
            }
            if let Ok(mut p) = self.passed.lock() {
                if p.len() >= MAX_PASSED {
                    p.clear();
                }
                p.insert(digest, user.clone());
            }
        }
        if self.remove_header {
            headers.remove(header::AUTHORIZATION);
        }
        if let Some(h) = &self.user_header
            && let Ok(v) = HeaderValue::from_str(&user)
        {
            headers.insert(h.clone(), v);
        }
        Ok(())
    }
}

/// `Basic base64(user:password)`, as RFC 7617 writes it.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    use base64::Engine;
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn credentials_digest(user: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(b"\0");
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A rate limit as GCRA (a token bucket kept as one timestamp per key: the time at which the
/// key's bucket is full again). Memory is bounded: at most `MAX_KEYS` keys are tracked; when
/// full, keys whose bucket has refilled (and so carry no information) are dropped, and if every
/// key is still busy, newcomers share one overflow bucket, so a flood of new addresses can
/// neither grow memory nor escape the limit.
#[derive(Debug)]
struct Limiter {
    key: RateKey,
    /// Nanoseconds per request on the long run.
    interval: u64,
    /// How far ahead of now a key's bucket may be and still admit: (burst - 1) intervals.
    tolerance: u64,
    /// As declared: a rebuilt route keeps the buckets of an unchanged limit.
    spec: RateLimit,
    /// Shared with the same limit of the route's previous runtime (see [`Chain::new`]).
    keys: Arc<Mutex<Buckets>>,
}

#[derive(Debug, Default)]
struct Buckets {
    full_at: HashMap<Key, u64>,
    /// When refilled keys were last dropped: a full map is swept at most every `SWEEP_EVERY`,
    /// so a flood of new keys costs one scan per interval, not one per request.
    swept: u64,
}

const SWEEP_EVERY: u64 = 100_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Text(Box<[u8]>),
    Router,
    Overflow,
}

pub(crate) const MAX_KEYS: usize = 65_536;

impl Limiter {
    fn new(r: &RateLimit, keys: Option<Arc<Mutex<Buckets>>>) -> Self {
        let interval = (r.period.as_nanos() as u64 / u64::from(r.average.max(1))).max(1);
        Limiter {
            key: r.key.clone(),
            interval,
            tolerance: interval.saturating_mul(u64::from(r.burst.max(1)) - 1),
            spec: r.clone(),
            keys: keys.unwrap_or_default(),
        }
    }

    fn admit(&self, headers: &HeaderMap, client_ip: IpAddr, now: Instant) -> Result<(), ProxyError> {
        let key = match &self.key {
            RateKey::ClientIp => Key::Ip(client_ip),
            RateKey::Router => Key::Router,
            RateKey::Header(h) => Key::Text(
                headers
                    .get(h.as_str())
                    .map(|v| v.as_bytes())
                    .unwrap_or(b"")
                    .into(),
            ),
        };
        let now = nanos_since_epoch(now);
        // A limit fails closed: a lock poisoned by a panic elsewhere still counts.
        let mut b = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = if b.full_at.len() >= MAX_KEYS && !b.full_at.contains_key(&key) {
            if now.saturating_sub(b.swept) >= SWEEP_EVERY {
                b.swept = now;
                b.full_at.retain(|_, full_at| *full_at > now);
            }
            if b.full_at.len() >= MAX_KEYS {
                Key::Overflow
            } else {
                key
            }
        } else {
            key
        };
        let keys = &mut b.full_at;
        let full_at = keys.get(&key).copied().unwrap_or(now).max(now);
        if full_at - now > self.tolerance {
            let wait = full_at - now - self.tolerance;
            return Err(ProxyError::RateLimited(
                Duration::from_nanos(wait).as_secs_f64().ceil() as u64,
            ));
        }
        keys.insert(key, full_at + self.interval);
        Ok(())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.keys.lock().unwrap().full_at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(average: u32, burst: u32, key: RateKey) -> Limiter {
        Limiter::new(
            &RateLimit {
                average,
                period: Duration::from_secs(1),
                burst,
                key,
            },
            None,
        )
    }

    #[test]
    fn a_rebuilt_chain_keeps_the_buckets_of_an_unchanged_limit() {
        let limit = |average| {
            let m = Middleware::RateLimit(RateLimit {
                average,
                period: Duration::from_secs(1),
                burst: 1,
                key: RateKey::Router,
            });
            vec![(Arc::<str>::from("limit"), Some(Arc::new(m)))]
        };
        let admit = |c: &Chain| match &c.steps[0].1 {
            Step::RateLimit(l) => l
                .admit(&HeaderMap::new(), [192, 0, 2, 1].into(), Instant::now())
                .is_ok(),
            _ => unreachable!(),
        };
        let first = Chain::new(&limit(1), None).unwrap();
        assert!(admit(&first));
        assert!(!admit(&first));
        let rebuilt = Chain::new(&limit(1), Some(&first)).unwrap();
        assert!(!admit(&rebuilt), "a rebuilt route handed out a fresh burst");
        let changed = Chain::new(&limit(2), Some(&rebuilt)).unwrap();
        assert!(admit(&changed), "a changed limit starts afresh");
    }

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let l = limiter(50, 10, RateKey::ClientIp);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let h = HeaderMap::new();
        let t0 = Instant::now();
        let admitted = (0..500).filter(|_| l.admit(&h, a, t0).is_ok()).count();
        assert_eq!(admitted, 10, "the burst at one instant");
        assert!(matches!(l.admit(&h, a, t0), Err(ProxyError::RateLimited(1))));
        assert!(l.admit(&h, b, t0).is_ok(), "another address has its own bucket");
        // 500 requests spread over the next second: the rate, 50 (and the burst once more,
        // since the bucket refilled by the time they start).
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..500)
            .filter(|i| l.admit(&h, a, t1 + Duration::from_millis(2 * i)).is_ok())
            .count();
        assert!((58..=61).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_flood_of_keys_is_bounded_and_cannot_escape_the_limit() {
        let l = limiter(1, 1, RateKey::ClientIp);
        let h = HeaderMap::new();
        let t0 = Instant::now();
        let mut admitted = 0;
        for i in 0..100_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            admitted += usize::from(l.admit(&h, ip, t0).is_ok());
        }
        assert!(l.tracked() <= MAX_KEYS + 1, "{}", l.tracked());
        // Every tracked key got one request; the newcomers beyond shared one bucket.
        assert_eq!(admitted, MAX_KEYS + 1);
        // Once their buckets refill, old keys are dropped to make room.
        let later = t0 + Duration::from_secs(2);
        let ip = IpAddr::from(std::net::Ipv4Addr::new(192, 0, 2, 1));
        assert!(l.admit(&h, ip, later).is_ok());
        assert!(l.tracked() <= 2, "{}", l.tracked());
    }

    #[test]
    fn redirects_by_regex_and_by_scheme_keep_path_and_query_and_the_method() {
        let re = Redirector::new(&Redirect {
            target: RedirectTarget::Regex {
                regex: "^https?://old\\.test/(.*)$".into(),
                replacement: "https://new.test/${1}".into(),
            },
            permanent: true,
        })
        .unwrap();
        let get = http::Method::GET;
        let post = http::Method::POST;
        let line = |host, pq, method| RequestLine {
            scheme: "http",
            host,
            path_and_query: pq,
            method,
        };
        let answer = |r: &Redirector, l| match r.answer(&l) {
            Some(ProxyError::Redirect(s, loc)) => Some((s.as_u16(), loc.to_str().unwrap().to_string())),
            _ => None,
        };
        assert_eq!(
            answer(&re, line("old.test", "/a/b?x=1", &get)),
            Some((301, "https://new.test/a/b?x=1".into()))
        );
        assert_eq!(answer(&re, line("old.test", "/a", &post)).unwrap().0, 308);
        assert_eq!(answer(&re, line("other.test", "/a", &get)), None);
        let https = Redirector::new(&Redirect {
            target: RedirectTarget::Scheme {
                scheme: "https".into(),
                port: Some(8443),
            },
            permanent: false,
        })
        .unwrap();
        assert_eq!(
            answer(&https, line("h.test:8080", "/p?q", &get)),
            Some((302, "https://h.test:8443/p?q".into()))
        );
        assert_eq!(
            answer(&https, line("[::1]:8080", "/", &post)),
            Some((307, "https://[::1]:8443/".into()))
        );
        let already = RequestLine {
            scheme: "https",
            ..line("h.test", "/", &get)
        };
        assert_eq!(answer(&https, already), None);
    }

    #[test]
    fn basic_credentials_are_read_as_rfc_7617_writes_them() {
        assert_eq!(
            basic_credentials(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
            Some(("aladdin".into(), "opensesame".into()))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(b"Basic bm9jb2xvbg=="), None);
    }
}
