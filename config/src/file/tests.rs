use super::*;
use crate::hash::HashOn;
use crate::matcher::HostPattern;
use crate::scale::Scale;
use crate::service::Policy;
use crate::service::Timeouts;

const GOOD: &str = r#"
[entrypoints.web]
address = "127.0.0.1:8080"

[admin]
address = "127.0.0.1:9000"

[routers.blog]
hosts = ["Blog.example.com", "*.blog.example.com"]
path_prefix = "/posts"
strip_prefix = true
service = "blog"

[routers.api]
rule = "Host(`api.example.com`) && Method(`GET`, `POST`)"
priority = 5
service = "api"

[services.blog]
backends = [
  { url = "http://10.0.0.2:2368", weight = 3, version = "v1" },
  { url = "http://10.0.0.1:2368" },
]

[services.api]
policy = "hash"
hash_on = "header:X-User"
backends = [{ url = "http://[::1]:9000" }]
timeouts = { connect = "250ms", response_header = "2s" }
limits = { max_idle_per_backend = 4 }
"#;

#[test]
fn a_full_file_validates_and_normalizes() {
    let v = load(GOOD, "gantry.toml").unwrap();
    assert_eq!(v.static_config.entrypoints.len(), 1);
    assert_eq!(v.static_config.admin.port(), 9000);
    let blog = &v.state.routers["blog"];
    assert_eq!(
        blog.matcher.hosts,
        vec![
            HostPattern::Exact("blog.example.com".into()),
            HostPattern::Wildcard("blog.example.com".into())
        ]
    );
    assert!(blog.strip_prefix);
    let svc = &v.state.services["blog"];
    // Sorted by URL, default weight 1.
    assert_eq!(svc.backends[0].url.host, "10.0.0.1");
    assert_eq!(svc.backends[0].weight, 1);
    assert_eq!(svc.backends[1].weight, 3);
    let api = &v.state.services["api"];
    assert!(matches!(&api.policy, Policy::Hash(HashOn::Header(h)) if h.as_str() == "x-user"));
    assert_eq!(api.timeouts.connect, std::time::Duration::from_millis(250));
    assert_eq!(api.timeouts.idle, Timeouts::default().idle);
    assert_eq!(api.limits.max_idle_per_backend, 4);
    assert_eq!(api.backends[0].url.authority(), "[::1]:9000");
}

#[test]
fn reordering_and_comments_do_not_change_meaning() {
    let reordered = r#"
# a comment
[services.api]
hash_on = "header:x-user"
policy = "hash"
limits = { max_idle_per_backend = 4 }
timeouts = { response_header = "2s", connect = "250ms" }
backends = [{ url = "http://[::1]:9000/" }]

[services.blog]
backends = [
  { url = "http://10.0.0.1:2368", weight = 1 },
  { url = "http://10.0.0.2:2368", version = "v1", weight = 3 },
]

[routers.api]
service = "api"
priority = 5
rule = "Method(`POST`, `GET`) && Host(`API.example.com`)"

[routers.blog]
service = "blog"
strip_prefix = true
path_prefix = "/posts"
hosts = ["*.blog.example.com", "blog.example.com."]

[admin]
address = "127.0.0.1:9000"
[entrypoints.web]
address = "127.0.0.1:8080"
"#;
    assert_eq!(load(GOOD, "a").unwrap(), load(reordered, "a").unwrap());
}

#[test]
fn every_error_names_origin_field_and_reason() {
    let bad = r#"
[routers.r1]
hosts = ["a:80"]
path = "nope"
service = "s1"

[routers.r2]
path_prefix = "/x"

[services.s1]
policy = "fastest"
backends = [
  { url = "10.0.0.1:80" },
  { url = "http://10.0.0.2/path" },
  { url = "http://10.0.0.3", weight = 20000 },
]
timeouts = { connect = "5" }
proxy_protocol = "v3"

[services.s2]
proxy_protocol = "v2"
backends = [{ url = "h2c://10.0.0.4" }]

[entrypoints.web]
address = "127.0.0.1:80"
limits = { send_timeout = "0s" }
"#;
    let errs = load(bad, "conf/gantry.toml").unwrap_err();
    let text = errs.to_string();
    for expected in [
        "conf/gantry.toml: routers.r1.hosts[0]: host \"a:80\" must not carry a port",
        "conf/gantry.toml: routers.r1.path: path \"nope\" must start with '/'",
        "conf/gantry.toml: routers.r2.service: missing",
        "conf/gantry.toml: services.s1.policy: unknown policy \"fastest\"",
        "conf/gantry.toml: services.s1.backends[0].url: \"10.0.0.1:80\"",
        "conf/gantry.toml: services.s1.backends[1].url: \"http://10.0.0.2/path\": a backend URL cannot carry a path",
        "conf/gantry.toml: services.s1.backends[2].weight: 20000 is out of range",
        "conf/gantry.toml: services.s1.timeouts.connect: invalid duration \"5\": missing unit",
        "conf/gantry.toml: services.s1.proxy_protocol: \"v3\" is not a PROXY protocol version",
        "conf/gantry.toml: services.s2.proxy_protocol: needs http:// backends",
        "conf/gantry.toml: entrypoints.web.limits.send_timeout: must be greater than zero",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn unknown_fields_and_syntax_errors_point_at_the_line() {
    let errs = load("[services.a]\nbackends = []\npolcy = \"x\"\n", "g.toml").unwrap_err();
    let text = errs.to_string();
    assert!(
        text.starts_with("g.toml: line 3, column 1: unknown field `polcy`"),
        "{text}"
    );
    let errs = load("[routers.a\n", "g.toml").unwrap_err();
    assert!(errs.to_string().starts_with("g.toml: line 1"), "{errs}");
}

#[test]
fn duplicates_and_inconsistent_fields_are_refused() {
    let errs = load(
        r#"
[routers.a]
rule = "Host(`x`)"
hosts = ["y"]
service = "s"
[routers.b]
hosts = ["x"]
strip_prefix = true
service = "s"
[services.s]
backends = [{ url = "http://a:1" }, { url = "http://A:1/" }]
policy = "round_robin"
hash_on = "client_ip"
"#,
        "g",
    )
    .unwrap_err()
    .to_string();
    assert!(
        errs.contains("routers.a.rule: use either `rule` or the fields"),
        "{errs}"
    );
    assert!(
        errs.contains("routers.b.strip_prefix: strip_prefix needs a path prefix"),
        "{errs}"
    );
    assert!(
        errs.contains("services.s.backends[1].url: http://a:1 is listed twice"),
        "{errs}"
    );
    assert!(
        errs.contains("services.s.hash_on: hash_on only applies"),
        "{errs}"
    );
}

#[test]
fn an_empty_file_gets_the_default_entrypoint_and_loopback_admin() {
    let v = load("", "g").unwrap();
    assert_eq!(v.static_config, StaticConfig::default());
    assert!(v.static_config.admin.ip().is_loopback());
}

#[test]
fn scale_settings_default_like_knative_and_bad_ones_name_their_field() {
    let ok = r#"
[services.api]
scale = { min = 2, target = 10 }
"#;
    let v = load(ok, "gantry.toml").unwrap();
    let s = v.state.services["api"].scale.clone().unwrap();
    assert_eq!((s.min, s.max), (2, Scale::DEFAULT_MAX));
    assert!((s.per_replica() - 7.0).abs() < 1e-9);
    assert_eq!(s.window, Duration::from_secs(60));
    assert_eq!(s.burst_window, Duration::from_secs(6));

    let bad = r#"
[services.api]
scale = { min = 5, max = 3, utilization = 1.5, window = "1s", burst_window = "2m" }
[services.zero]
scale = { min = 0 }
"#;
    let text = load(bad, "gantry.toml").unwrap_err().to_string();
    for want in [
        "gantry.toml: services.api.scale.min: 5 is above services.api.scale.max 3",
        "gantry.toml: services.api.scale.utilization: 1.5 is out of range 0.01..=1",
        "gantry.toml: services.api.scale.window: 1s is out of range 2s..=1h",
        "gantry.toml: services.api.scale.burst_window: 2m must be above zero and at most the window (1s)",
        "gantry.toml: services.zero.scale.min: 0 is out of range 1..=1000",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn trusted_ips_take_networks_and_addresses_and_name_a_bad_one() {
    let good = "[entrypoints.web]\naddress = \"127.0.0.1:8080\"\ntrusted_ips = [\"10.1.2.3/8\", \"192.0.2.7\", \"fd00::/8\"]\n";
    let v = load(good, "g.toml").unwrap();
    let ips: Vec<String> = v.static_config.entrypoints[0]
        .trusted_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    // Host bits are dropped: 10.1.2.3/8 is the network 10.0.0.0/8.
    assert_eq!(ips, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    let bad =
        "[entrypoints.web]\naddress = \"127.0.0.1:8080\"\ntrusted_ips = [\"10.0.0.0/8\", \"everyone\"]\n";
    let text = load(bad, "g.toml").unwrap_err().to_string();
    assert!(
        text.contains("g.toml: entrypoints.web.trusted_ips[1]: \"everyone\" is not an IP network"),
        "{text}"
    );
    // PROXY headers are believed from trusted peers only: enabling it with nobody trusted is
    // a configuration that would close every PROXY connection, so it is refused.
    let lonely = "[entrypoints.web]\naddress = \"127.0.0.1:8080\"\nproxy_protocol = true\n";
    let text = load(lonely, "g.toml").unwrap_err().to_string();
    assert!(
        text.contains("g.toml: entrypoints.web.proxy_protocol: needs trusted_ips"),
        "{text}"
    );
}
