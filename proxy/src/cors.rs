//! CORS (the `cors` rule of a `headers` middleware): preflights answered by Gantry, allowed
//! origins told so on each response. An origin that is not allowed gets no CORS headers, so
//! the browser keeps the answer from the page; the request itself is not refused (CORS binds
//! browsers, not clients).

use gantry_config::middleware::Cors;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::error::ProxyError;
use crate::response::ResponseBody;

/// The origin to allow on the response (`None`: none), or a preflight's answer.
pub(crate) fn check(
    cors: &Cors,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Option<HeaderValue>, ProxyError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(None);
    };
    let allowed = cors.allowed(origin).and_then(|a| HeaderValue::from_str(a).ok());
    if method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return Err(ProxyError::Answered(
            "cors_preflight",
            Box::new(preflight(cors, headers, allowed)),
        ));
    }
    Ok(allowed)
}

fn preflight(cors: &Cors, req: &HeaderMap, allowed: Option<HeaderValue>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::VARY,
        HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    );
    let Some(origin) = allowed else {
        return resp;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    // `*` allows what was asked (echoed: with credentials a browser does not take `*`).
    let echo_or_list = |list: &[String], asked: header::HeaderName| {
        if list.iter().any(|m| m == "*") {
            req.get(asked).cloned()
        } else if list.is_empty() {
            None
        } else {
            HeaderValue::from_str(&list.join(", ")).ok()
        }
    };
    if let Some(v) = echo_or_list(&cors.allow_methods, header::ACCESS_CONTROL_REQUEST_METHOD) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(v) = echo_or_list(&cors.allow_headers, header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(age) = cors.max_age {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
    }
    resp
}

/// The CORS headers of a response to a request from `origin` (when allowed). The answer
/// depends on `Origin` either way, so caches are told (`Vary`).
pub(crate) fn respond(cors: &Cors, h: &mut HeaderMap, origin: Option<HeaderValue>) {
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", "))
    {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec!["X-Total".into()],
            allow_credentials: credentials,
            max_age: Some(600),
        }
    }

    fn req(origin: &str, preflight: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("PUT"),
            );
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_static("x-token"),
            );
        }
        h
    }

    #[test]
    fn preflights_are_answered_and_only_allowed_origins_are_told_so() {
        let c = cors(&["https://app.test"], true);
        let Err(ProxyError::Answered(_, resp)) = check(&c, &req("https://app.test", true), &Method::OPTIONS)
        else {
            panic!("a preflight is answered by Gantry");
        };
        let h = resp.headers();
        assert_eq!(resp.status(), 204);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.test");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-token");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");

        let Err(ProxyError::Answered(_, resp)) = check(&c, &req("https://evil.test", true), &Method::OPTIONS)
        else {
            panic!()
        };
        assert!(!resp.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

        // A plain OPTIONS (no Access-Control-Request-Method) is the backend's.
        assert!(check(&c, &req("https://app.test", false), &Method::OPTIONS).is_ok());
        assert_eq!(check(&c, &HeaderMap::new(), &Method::GET).unwrap(), None);

        let origin = check(&c, &req("https://app.test", false), &Method::GET).unwrap();
        let mut h = HeaderMap::new();
        respond(&c, &mut h, origin);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.test");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "X-Total");
        assert_eq!(h[header::VARY], "Origin");

        let any = cors(&["*"], false);
        assert_eq!(
            check(&any, &req("https://x.test", false), &Method::GET)
                .unwrap()
                .unwrap(),
            "*"
        );
    }
}
