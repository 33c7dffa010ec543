//! The web console: plain HTML, CSS and JavaScript (ES modules, no build
//! step; uPlot vendored under `vendor/uplot/`) embedded in the binary from
//! `crates/myriad-api/console/` and served at `/console/` without auth.
//! Every datum the console shows comes from the API with the session cookie.
//!
//! Every answer carries a strict Content-Security-Policy (`default-src
//! 'self'`, no inline script), `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`; assets carry
//! an `ETag` (BLAKE3 of the content) and answer `If-None-Match` with 304.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use include_dir::{Dir, include_dir};

use crate::error::ApiError;

/// The console's files, embedded at compile time.
static ASSETS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/console");

/// The console's Content-Security-Policy: only this origin, no inline
/// script or style elements, no plugins, never framed.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Longest asset path looked up (longer ones are 404 without a lookup).
const MAX_ASSET_PATH: usize = 256;

/// One embedded file with what its answer needs.
struct Asset {
    /// The file's bytes.
    body: &'static [u8],
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its `ETag` (quoted).
    etag: HeaderValue,
    /// Its `Cache-Control`.
    cache_control: &'static str,
}

/// Every embedded file by its path under `console/` (`index.html`,
/// `vendor/uplot/uPlot.iife.min.js`, ...), built once.
static INDEX: LazyLock<HashMap<String, Asset>> = LazyLock::new(|| {
    let mut index = HashMap::new();
    collect(&ASSETS, &mut index);
    index
});

/// Adds every file of `dir` (recursively: the tree is ours, fixed at
/// compile time) to `index`.
fn collect(dir: &'static Dir<'static>, index: &mut HashMap<String, Asset>) {
    for file in dir.files() {
        let path = file.path().to_string_lossy().replace('\\', "/");
        let hash = blake3::hash(file.contents()).to_hex();
        let etag = HeaderValue::from_str(&format!("\"{}\"", &hash[..32]))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        let cache_control = if path.starts_with("vendor/") {
            "public, max-age=86400"
        } else {
            "no-cache"
        };
        index.insert(
            path.clone(),
            Asset {
                body: file.contents(),
                content_type: content_type(&path),
                etag,
                cache_control,
            },
        );
    }
    for sub in dir.dirs() {
        collect(sub, index);
    }
}

/// The `Content-Type` of a console file by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// The console's routes: `/` and `/console` redirect to `/console/`,
/// `/console/` is `index.html`, `/console/{path}` any other asset.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(root))
        .route("/console", get(root))
        .route("/console/", get(index))
        .route("/console/{*path}", get(asset))
}

/// `/`: the console.
#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    responses((status = 303, description = "Redirect to /console/"))
)]
pub(crate) async fn root() -> Response {
    with_security_headers(Redirect::to("/console/").into_response())
}

/// `/console/`: the console's page (the single-page app; routes after `#`).
#[utoipa::path(
    get,
    path = "/console/",
    tag = "console",
    responses(
        (status = 200, description = "The console's HTML page", content_type = "text/html"),
        (status = 304, description = "Not modified (If-None-Match)")
    )
)]
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `/console/{path}`: one of the console's scripts, style sheets or
/// vendored files.
#[utoipa::path(
    get,
    path = "/console/{path}",
    tag = "console",
    params(("path" = String, Path, description = "The asset's path, e.g. app.js or vendor/uplot/uPlot.min.css")),
    responses(
        (status = 200, description = "The asset"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "No such asset", body = crate::dto::ErrorBody)
    )
)]
pub(crate) async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// Answers with the asset at `path`, 304 when `If-None-Match` names its
/// ETag, 404 when there is none.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let found = if path.len() > MAX_ASSET_PATH {
        None
    } else {
        INDEX.get(path)
    };
    let Some(asset) = found else {
        return with_security_headers(
            ApiError::NotFound("no such console file".into()).into_response(),
        );
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == asset.etag || tag.trim() == "*")
        });
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, asset.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(asset.cache_control),
    );
    with_security_headers(response)
}

/// Adds the console's security headers to `response`.
fn with_security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_module_and_the_vendored_chart_are_embedded() {
        for path in [
            "index.html",
            "app.js",
            "style.css",
            "vendor/uplot/uPlot.iife.min.js",
            "vendor/uplot/uPlot.min.css",
            "vendor/uplot/LICENSE",
        ] {
            assert!(INDEX.contains_key(path), "{path} is not embedded");
        }
        assert_eq!(
            INDEX["app.js"].content_type,
            "text/javascript; charset=utf-8"
        );
        assert_eq!(INDEX["style.css"].content_type, "text/css; charset=utf-8");
        assert_eq!(INDEX["index.html"].cache_control, "no-cache");
    }

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// One GET through the console's router.
    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router::<()>()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    #[tokio::test]
    async fn answers_carry_the_security_headers_and_revalidate() {
        let root = get("/", None).await;
        assert_eq!(root.status(), StatusCode::SEE_OTHER);
        assert_eq!(root.headers()[header::LOCATION], "/console/");
        let page = get("/console/", None).await;
        assert_eq!(page.status(), StatusCode::OK);
        let h = page.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let etag = h[header::ETAG].to_str().expect("ascii").to_string();
        let again = get("/console/", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::X_FRAME_OPTIONS], "DENY");
        let other = get("/console/", Some("\"nope\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_and_overlong_paths_are_404() {
        let at_limit = format!("/console/{}", "a".repeat(MAX_ASSET_PATH));
        let past_limit = format!("/console/{}", "a".repeat(MAX_ASSET_PATH + 1));
        for path in [
            "/console/nope.js",
            "/console/js",
            at_limit.as_str(),
            past_limit.as_str(),
        ] {
            let reply = get(path, None).await;
            assert_eq!(reply.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(reply.headers()[header::X_FRAME_OPTIONS], "DENY");
        }
        assert_eq!(
            get("/console/js/ui.js", None).await.status(),
            StatusCode::OK
        );
    }

    /// Whether `line` has an attribute like ` onclick=`.
    fn has_inline_handler(line: &str) -> bool {
        line.match_indices(" on").any(|(at, _)| {
            let rest = &line[at + 3..];
            let name_len = rest.chars().take_while(char::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn no_inline_script_in_the_page() {
        let html = std::str::from_utf8(INDEX["index.html"].body).expect("utf-8");
        for line in html.lines() {
            if line.contains("<script") {
                assert!(line.contains("src="), "inline script: {line}");
            }
            assert!(!has_inline_handler(line), "inline event handler: {line}");
        }
    }
}
