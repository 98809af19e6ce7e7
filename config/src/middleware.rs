//! Middlewares: what a router does to a request before it is forwarded, and to the response on
//! its way back (header rules, IP allow lists, basic authentication, rate limits). Declared once
//! by name with one type and its options, attached to routers in order; validated from their
//! raw shape, which is the same in the file, in Docker labels and in etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};

mod basic_auth;
mod cors;
mod errors;
mod forward_auth;

pub use basic_auth::{BasicAuth, FileBasicAuth};
pub use cors::{Cors, FileCors};
pub use errors::{ErrorPage, ErrorPages, FileErrors, StatusText};
pub use forward_auth::{FileForwardAuth, ForwardAuth};

use crate::check::check_name;
use crate::duration;
use crate::error::Errors;

/// One middleware: its type and options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Middleware {
    Headers(HeaderRules),
    IpAllow(IpAllow),
    BasicAuth(BasicAuth),
    RateLimit(RateLimit),
    Compress(Compress),
    Redirect(Redirect),
    ForwardAuth(ForwardAuth),
    Errors(ErrorPages),
}

impl Middleware {
    /// The type's name, as declared (`headers`, `ip_allow`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Middleware::Headers(_) => "headers",
            Middleware::IpAllow(_) => "ip_allow",
            Middleware::BasicAuth(_) => "basic_auth",
            Middleware::RateLimit(_) => "rate_limit",
            Middleware::Compress(_) => "compress",
            Middleware::Redirect(_) => "redirect",
            Middleware::ForwardAuth(_) => "forward_auth",
            Middleware::Errors(_) => "errors",
        }
    }
}

/// Header edits on requests (before forwarding) and responses (before answering).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderRules {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

/// Edits applied in order: remove, then set (replacing), then add (appending).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderEdits {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// The response headers of the `security = true` preset (explicit `response.set` values win).
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-frame-options", "DENY"),
];

/// Requests from the resolved client address: refused with 403 when it is in `deny`, or when
/// `allow` is not empty and it is not in `allow`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IpAllow {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl IpAllow {
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// A token bucket per key: `average` requests per `period` on the long run, `burst` at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub average: u32,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub period: Duration,
    pub burst: u32,
    pub key: RateKey,
}

/// What a rate limit counts by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The resolved client address (the default).
    ClientIp,
    /// A request header's value (requests without it share one bucket).
    Header(String),
    /// One bucket for the whole router.
    Router,
}

impl Serialize for RateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RateKey::ClientIp => s.serialize_str("client_ip"),
            RateKey::Header(h) => s.serialize_str(&format!("header:{h}")),
            RateKey::Router => s.serialize_str("router"),
        }
    }
}

/// A redirect instead of proxying: by a regex on the full URL, or to another scheme. Permanent:
/// 301 for GET and HEAD, 308 otherwise; temporary: 302 and 307 (the method is kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Redirect {
    #[serde(flatten)]
    pub target: RedirectTarget,
    pub permanent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RedirectTarget {
    /// `scheme://host/path?query` matching `regex` goes to `replacement` (`${1}` for groups).
    Regex { regex: String, replacement: String },
    /// Requests on another scheme go to this one (and `port`, else the scheme's default).
    Scheme { scheme: String, port: Option<u16> },
}

/// Response compression, streamed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compress {
    /// The codings Gantry may use, in its order of preference (after the client's q-values).
    pub encodings: Vec<Encoding>,
    /// Responses that declare fewer bytes are sent as they are.
    pub min_bytes: u64,
    /// Content types compressed (a trailing `/` matches a family: `text/`).
    pub content_types: Vec<String>,
    pub exclude_content_types: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Zstd,
    Br,
    Gzip,
}

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// What `compress` compresses when `content_types` is not given: text that compresses well.
pub const DEFAULT_COMPRESSED_TYPES: [&str; 9] = [
    "text/",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/wasm",
    "application/manifest+json",
    "image/svg+xml",
    "font/ttf",
];

/// A middleware as written: exactly one of the types.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMiddleware {
    pub headers: Option<FileHeaders>,
    pub ip_allow: Option<FileIpAllow>,
    pub basic_auth: Option<FileBasicAuth>,
    pub rate_limit: Option<FileRateLimit>,
    pub compress: Option<FileCompress>,
    pub redirect: Option<FileRedirect>,
    pub forward_auth: Option<FileForwardAuth>,
    pub errors: Option<FileErrors>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedirect {
    pub regex: Option<String>,
    pub replacement: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<i64>,
    pub permanent: Option<bool>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCompress {
    pub encodings: Option<Vec<String>>,
    pub min_bytes: Option<crate::size::FileSize>,
    pub content_types: Option<Vec<String>>,
    pub exclude_content_types: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaders {
    pub request: Option<FileHeaderEdits>,
    pub response: Option<FileHeaderEdits>,
    /// Adds HSTS, `X-Content-Type-Options`, `Referrer-Policy` and `X-Frame-Options` to responses.
    pub security: Option<bool>,
    pub cors: Option<FileCors>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaderEdits {
    #[serde(default, deserialize_with = "text_values")]
    pub set: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "text_values")]
    pub add: Option<BTreeMap<String, String>>,
    pub remove: Option<Vec<String>>,
}

/// Header values are text, but a label value like `10` or `true` arrives typed: take it as the
/// text it was.
fn text_values<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let map: Option<BTreeMap<String, Text>> = Option::deserialize(d)?;
    Ok(map.map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Text::S(s) => s,
                    Text::I(i) => i.to_string(),
                    Text::F(f) => f.to_string(),
                    Text::B(b) => b.to_string(),
                };
                (k, v)
            })
            .collect()
    }))
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIpAllow {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    pub average: Option<i64>,
    pub period: Option<String>,
    pub burst: Option<i64>,
    /// `client_ip` (default), `header:NAME` or `router`.
    pub key: Option<String>,
}

/// Validates one middleware; `read` reads the files it names (an htpasswd file, an error page),
/// relative to the config file (sources other than the file pass [`crate::file::no_files`]: a
/// container label must not make Gantry read files on its host).
pub fn validate_middleware(
    m: FileMiddleware,
    origin: &str,
    field: &str,
    name: &str,
    read: crate::file::ReadFile<'_>,
    errs: &mut Errors,
) -> Option<Middleware> {
    let before = errs.0.len();
    check_name(errs, origin, field, name);
    let declared = [
        m.headers.is_some(),
        m.ip_allow.is_some(),
        m.basic_auth.is_some(),
        m.rate_limit.is_some(),
        m.compress.is_some(),
        m.redirect.is_some(),
        m.forward_auth.is_some(),
        m.errors.is_some(),
    ];
    if declared.iter().filter(|&&d| d).count() != 1 {
        errs.push(
            origin,
            field,
            "declare exactly one type: headers, ip_allow, basic_auth, forward_auth, rate_limit, compress, redirect or errors",
        );
        return None;
    }
    let out = if let Some(h) = m.headers {
        Middleware::Headers(validate_headers(h, origin, &format!("{field}.headers"), errs))
    } else if let Some(a) = m.ip_allow {
        Middleware::IpAllow(validate_ip_allow(a, origin, &format!("{field}.ip_allow"), errs))
    } else if let Some(b) = m.basic_auth {
        Middleware::BasicAuth(basic_auth::validate_basic_auth(
            b,
            origin,
            &format!("{field}.basic_auth"),
            read,
            errs,
        ))
    } else if let Some(f) = m.forward_auth {
        Middleware::ForwardAuth(forward_auth::validate_forward_auth(
            f,
            origin,
            &format!("{field}.forward_auth"),
            errs,
        ))
    } else if let Some(e) = m.errors {
        Middleware::Errors(errors::validate_errors(
            e,
            origin,
            &format!("{field}.errors"),
            read,
            errs,
        ))
    } else if let Some(r) = m.redirect {
        Middleware::Redirect(validate_redirect(r, origin, &format!("{field}.redirect"), errs))
    } else if let Some(c) = m.compress {
        Middleware::Compress(validate_compress(c, origin, &format!("{field}.compress"), errs))
    } else {
        let r = m.rate_limit.unwrap_or_default();
        Middleware::RateLimit(validate_rate_limit(
            r,
            origin,
            &format!("{field}.rate_limit"),
            errs,
        ))
    };
    (errs.0.len() == before).then_some(out)
}

fn validate_headers(h: FileHeaders, origin: &str, field: &str, errs: &mut Errors) -> HeaderRules {
    let mut rules = HeaderRules {
        request: edits(h.request, origin, &format!("{field}.request"), errs),
        response: edits(h.response, origin, &format!("{field}.response"), errs),
        cors: h
            .cors
            .map(|c| cors::validate_cors(c, origin, &format!("{field}.cors"), errs)),
    };
    if h.security == Some(true) {
        for (n, v) in SECURITY_HEADERS {
            rules
                .response
                .set
                .entry(n.to_string())
                .or_insert_with(|| v.to_string());
        }
    }
    if rules.request.is_empty() && rules.response.is_empty() && rules.cors.is_none() {
        errs.push(
            origin,
            field,
            "no header edits: set request/response set, add or remove, security = true, or cors",
        );
    }
    rules
}

fn edits(e: Option<FileHeaderEdits>, origin: &str, field: &str, errs: &mut Errors) -> HeaderEdits {
    let Some(e) = e else {
        return HeaderEdits::default();
    };
    let mut out = HeaderEdits::default();
    for (part, map, slot) in [("set", e.set, &mut out.set), ("add", e.add, &mut out.add)] {
        for (n, v) in map.into_iter().flatten() {
            let f = format!("{field}.{part}.{n}");
            if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                errs.push(origin, &f, format!("{n:?} is not a header name"));
            } else if http::HeaderValue::from_str(&v).is_err() {
                errs.push(origin, &f, format!("{v:?} is not a header value"));
            } else {
                slot.insert(n.to_ascii_lowercase(), v);
            }
        }
    }
    for (i, n) in e.remove.into_iter().flatten().enumerate() {
        match http::HeaderName::from_bytes(n.trim().as_bytes()) {
            Ok(h) => out.remove.push(h.as_str().to_string()),
            Err(_) => errs.push(
                origin,
                format!("{field}.remove[{i}]"),
                format!("{n:?} is not a header name"),
            ),
        }
    }
    out
}

fn validate_ip_allow(a: FileIpAllow, origin: &str, field: &str, errs: &mut Errors) -> IpAllow {
    let allow = a.allow.unwrap_or_default();
    let deny = a.deny.unwrap_or_default();
    if allow.is_empty() && deny.is_empty() {
        errs.push(origin, field, "needs allow or deny (a list of networks)");
    }
    let rule = IpAllow {
        allow: crate::listener::validate_trusted_ips(&allow, origin, &format!("{field}.allow"), errs),
        deny: crate::listener::validate_trusted_ips(&deny, origin, &format!("{field}.deny"), errs),
    };
    // Lists that say nothing or contradict themselves are mistakes, not rules.
    for (list, nets) in [("allow", &rule.allow), ("deny", &rule.deny)] {
        for (i, n) in nets.iter().enumerate() {
            if let Some(wider) = nets[..i].iter().find(|w| w.contains(n) || n.contains(*w)) {
                errs.push(
                    origin,
                    format!("{field}.{list}[{i}]"),
                    format!("{n} overlaps {wider}, listed before it"),
                );
            }
        }
    }
    for (i, n) in rule.allow.iter().enumerate() {
        if let Some(d) = rule.deny.iter().find(|d| d.contains(n)) {
            errs.push(
                origin,
                format!("{field}.allow[{i}]"),
                format!("{n} is inside deny {d}: it can never let anyone in"),
            );
        }
    }
    rule
}

fn validate_redirect(r: FileRedirect, origin: &str, field: &str, errs: &mut Errors) -> Redirect {
    let permanent = r.permanent.unwrap_or(false);
    let target = match (r.regex, r.replacement, r.scheme) {
        (Some(regex), Some(replacement), None) if r.port.is_none() => {
            match regex::RegexBuilder::new(&regex).size_limit(1 << 20).build() {
                Ok(_) => {}
                Err(e) => errs.push(origin, format!("{field}.regex"), format!("invalid regex: {e}")),
            }
            if replacement.trim().is_empty() {
                errs.push(origin, format!("{field}.replacement"), "empty");
            }
            RedirectTarget::Regex { regex, replacement }
        }
        (None, None, Some(scheme)) => {
            let scheme = scheme.trim().to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                errs.push(
                    origin,
                    format!("{field}.scheme"),
                    format!("{scheme:?}: use http or https"),
                );
            }
            let port = match r.port {
                None => None,
                Some(p) => match u16::try_from(p) {
                    Ok(p) if p > 0 => Some(p),
                    _ => {
                        errs.push(origin, format!("{field}.port"), format!("{p} is not a port"));
                        None
                    }
                },
            };
            RedirectTarget::Scheme { scheme, port }
        }
        _ => {
            errs.push(
                origin,
                field,
                "give either regex and replacement, or scheme (and port)",
            );
            RedirectTarget::Scheme {
                scheme: "https".into(),
                port: None,
            }
        }
    };
    Redirect { target, permanent }
}

fn validate_compress(c: FileCompress, origin: &str, field: &str, errs: &mut Errors) -> Compress {
    let given = c.encodings.is_some();
    let mut encodings = Vec::new();
    for (i, e) in c
        .encodings
        .unwrap_or_else(|| vec!["zstd".into(), "br".into(), "gzip".into()])
        .iter()
        .enumerate()
    {
        let enc = match e.trim() {
            "zstd" => Encoding::Zstd,
            "br" => Encoding::Br,
            "gzip" => Encoding::Gzip,
            other => {
                errs.push(
                    origin,
                    format!("{field}.encodings[{i}]"),
                    format!("{other:?}: use zstd, br or gzip"),
                );
                continue;
            }
        };
        if !encodings.contains(&enc) {
            encodings.push(enc);
        }
    }
    if encodings.is_empty() && given {
        errs.push(
            origin,
            format!("{field}.encodings"),
            "empty: nothing to compress with",
        );
    }
    let min_bytes = match c.min_bytes.map(|s| s.bytes()) {
        None => 1024,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            errs.push(origin, format!("{field}.min_bytes"), e);
            0
        }
    };
    let types = |list: Vec<String>, name: &str, errs: &mut Errors| -> Vec<String> {
        let mut out = Vec::new();
        for (i, t) in list.into_iter().enumerate() {
            let t = t.trim().to_ascii_lowercase();
            let t = t.strip_suffix('*').unwrap_or(&t).to_string();
            if !t.contains('/') || t.contains(|c: char| c.is_whitespace() || c == ';') {
                errs.push(
                    origin,
                    format!("{field}.{name}[{i}]"),
                    format!("{t:?} is not a content type like text/html or text/"),
                );
            } else {
                out.push(t);
            }
        }
        out
    };
    let content_types = match c.content_types {
        None => DEFAULT_COMPRESSED_TYPES.iter().map(|t| t.to_string()).collect(),
        Some(list) => types(list, "content_types", errs),
    };
    Compress {
        encodings,
        min_bytes,
        content_types,
        exclude_content_types: types(
            c.exclude_content_types.unwrap_or_default(),
            "exclude_content_types",
            errs,
        ),
    }
}

fn validate_rate_limit(r: FileRateLimit, origin: &str, field: &str, errs: &mut Errors) -> RateLimit {
    let average = match r.average {
        Some(a) if (1..=1_000_000).contains(&a) => a as u32,
        Some(a) => {
            errs.push(
                origin,
                format!("{field}.average"),
                format!("{a} is out of range 1..=1000000"),
            );
            1
        }
        None => {
            errs.push(origin, format!("{field}.average"), "missing");
            1
        }
    };
    let period = match r.period.as_deref().map(duration::parse) {
        None => Duration::from_secs(1),
        Some(Ok(d)) if !d.is_zero() && d <= Duration::from_secs(3600) => d,
        Some(Ok(_)) => {
            errs.push(origin, format!("{field}.period"), "must be in 1ms..=1h");
            Duration::from_secs(1)
        }
        Some(Err(e)) => {
            errs.push(origin, format!("{field}.period"), e);
            Duration::from_secs(1)
        }
    };
    let burst = match r.burst {
        None => average,
        Some(b) if (1..=1_000_000).contains(&b) => b as u32,
        Some(b) => {
            errs.push(
                origin,
                format!("{field}.burst"),
                format!("{b} is out of range 1..=1000000"),
            );
            1
        }
    };
    let key = match r.key.as_deref().map(str::trim) {
        None | Some("client_ip") => RateKey::ClientIp,
        Some("router") => RateKey::Router,
        Some(k) => match k.strip_prefix("header:") {
            Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                RateKey::Header(h.to_ascii_lowercase())
            }
            _ => {
                errs.push(
                    origin,
                    format!("{field}.key"),
                    format!("{k:?}: use client_ip, header:NAME or router"),
                );
                RateKey::ClientIp
            }
        },
    };
    RateLimit {
        average,
        period,
        burst,
        key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<Middleware, String> {
        let m: FileMiddleware = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let mut errs = Errors::new();
        validate_middleware(
            m,
            "test.toml",
            "middlewares.m",
            "m",
            &crate::file::no_files,
            &mut errs,
        )
        .ok_or_else(|| errs.to_string())
    }

    #[test]
    fn each_type_validates_and_bad_declarations_name_their_field() {
        let h = check(
            "[headers]\nsecurity = true\nrequest = { set = { X-Env = \"prod\" }, remove = [\"X-Debug\"] }\n",
        )
        .unwrap();
        let Middleware::Headers(h) = h else { panic!() };
        assert_eq!(h.request.set["x-env"], "prod");
        assert_eq!(h.request.remove, ["x-debug"]);
        assert_eq!(h.response.set["x-frame-options"], "DENY");

        let a =
            check("[ip_allow]\nallow = [\"10.0.0.0/8\", \"192.0.2.7\"]\ndeny = [\"10.1.0.0/16\"]\n").unwrap();
        let Middleware::IpAllow(a) = a else { panic!() };
        assert!(a.permits("10.2.3.4".parse().unwrap()));
        assert!(!a.permits("10.1.3.4".parse().unwrap()));
        assert!(!a.permits("192.0.2.8".parse().unwrap()));

        let r = check("[rate_limit]\naverage = 50\nburst = 10\nkey = \"header:X-Api-Key\"\n").unwrap();
        assert_eq!(
            r,
            Middleware::RateLimit(RateLimit {
                average: 50,
                period: Duration::from_secs(1),
                burst: 10,
                key: RateKey::Header("x-api-key".into())
            })
        );

        for (text, expected) in [
            ("", "declare exactly one type"),
            (
                "[headers]\n[ip_allow]\nallow = [\"10.0.0.0/8\"]\n",
                "declare exactly one type",
            ),
            ("[forward_auth]\n", "is not a URL like"),
            (
                "[forward_auth]\naddress = \"https://auth/\"\n",
                "not supported yet",
            ),
            ("[errors]\nstatus = [\"500-599\"]\n", "give either service"),
            (
                "[errors]\nstatus = [\"300\"]\nservice = \"pages\"\n",
                "middlewares.m.errors.status[0]",
            ),
            (
                "[errors]\nstatus = [500]\nfile = \"oops.html\"\n",
                "this config source cannot refer to files",
            ),
            (
                "[basic_auth]\nusers_file = \"users.htpasswd\"\n",
                "middlewares.m.basic_auth.users_file: cannot read users.htpasswd",
            ),
            (
                "[headers.cors]\nallow_origins = [\"app.example\"]\n",
                "is not an origin like",
            ),
            (
                "[headers]\nrequest = { set = { \"bad name\" = \"x\" } }\n",
                "middlewares.m.headers.request.set.bad name: \"bad name\" is not a header name",
            ),
            (
                "[ip_allow]\nallow = [\"10.0.0.0/33\"]\n",
                "middlewares.m.ip_allow.allow[0]",
            ),
            ("[ip_allow]\n", "needs allow or deny"),
            (
                "[ip_allow]\nallow = [\"10.1.0.0/16\"]\ndeny = [\"10.0.0.0/8\"]\n",
                "middlewares.m.ip_allow.allow[0]: 10.1.0.0/16 is inside deny 10.0.0.0/8",
            ),
            (
                "[ip_allow]\nallow = [\"10.0.0.0/8\", \"10.2.0.0/16\"]\n",
                "middlewares.m.ip_allow.allow[1]: 10.2.0.0/16 overlaps 10.0.0.0/8",
            ),
            (
                "[basic_auth]\nusers = [\"admin:secret\"]\n",
                "only bcrypt is accepted",
            ),
            ("[basic_auth]\nusers = [\"admin:$apr1$abc$def\"]\n", "an MD5 hash"),
            ("[basic_auth]\nusers = []\n", "no users"),
            (
                "[rate_limit]\nburst = 5\n",
                "middlewares.m.rate_limit.average: missing",
            ),
            (
                "[rate_limit]\naverage = 5\nkey = \"cookie:x\"\n",
                "use client_ip, header:NAME or router",
            ),
            (
                "[redirect]\nregex = \"(\"\nreplacement = \"x\"\n",
                "middlewares.m.redirect.regex: invalid regex",
            ),
            (
                "[redirect]\nregex = \"x\"\n",
                "give either regex and replacement, or scheme",
            ),
            ("[redirect]\nscheme = \"ftp\"\n", "use http or https"),
            ("[compress]\nencodings = [\"lz4\"]\n", "use zstd, br or gzip"),
            (
                "[compress]\ncontent_types = [\"html\"]\n",
                "is not a content type",
            ),
        ] {
            let err = check(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains("secret"), "a password was echoed: {err}");
        }
    }
}
