//! The demo client at `GET /`: one self-contained HTML page (inline CSS and JavaScript, no
//! build step, nothing fetched from elsewhere) compiled into the binary, so every node, and
//! the balancer in front of them, serves it without files to deploy.
//!
//! It uses only the public API: REST for accounts, the catalogue and orders, and `/ws` for the
//! live feed, order progress and room chat. It is not an API operation, so it is not in the
//! OpenAPI document, and its metrics label is its own route (`/`).
//!
//! The page is served with a Content-Security-Policy that allows exactly its own inline script
//! and style (by SHA-256) and connections to its own origin: an event payload or chat line
//! that somehow reached the DOM as markup still could not run script.

use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use poem::{get, handler, http::header, Endpoint, EndpointExt, Response, Route};
use sha2::{Digest, Sha256};

/// The page, as served.
pub const PAGE: &str = include_str!("demo/index.html");

/// The page's `Content-Security-Policy`, computed once from the page itself.
static POLICY: LazyLock<String> = LazyLock::new(|| policy(PAGE));

/// `routes` with the page at exactly `/` in front of them.
///
/// Not a `.at("/")` beside the API: poem's router prefers the catch-all of the API nested at
/// `/` over an exact `/`, so the page gets a router of its own, consulted first. That router
/// still marks the answer with its route (`/`, the metrics label) and answers other methods
/// with 405.
pub fn in_front_of<E: Endpoint + 'static>(routes: E) -> impl Endpoint<Output = Response> {
    let root = Arc::new(Route::new().at("/", get(page)));
    routes.map_to_response().around(move |next, req| {
        let root = Arc::clone(&root);
        async move {
            if req.uri().path() == "/" {
                root.call(req).await
            } else {
                next.call(req).await
            }
        }
    })
}

/// `GET /`: the demo client.
#[handler]
pub fn page() -> Response {
    Response::builder()
        .content_type("text/html; charset=utf-8")
        // Small and compiled in: always revalidate, so a new release's page is picked up.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, POLICY.as_str())
        .body(PAGE)
}

/// A policy allowing the inline `<script>` and `<style>` elements of `html` by hash, and
/// nothing from elsewhere. `connect-src 'self'` covers the page's own `ws:`/`wss:` origin.
fn policy(html: &str) -> String {
    let hashes = |tag: &str| -> String {
        inline_elements(html, tag)
            .map(|body| {
                let digest = Sha256::digest(body.as_bytes());
                format!(
                    " 'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest)
                )
            })
            .collect()
    };
    format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style"),
    )
}

/// The text of each `<tag>…</tag>` element (written without attributes) in `html`.
fn inline_elements<'a>(html: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut rest = html;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let body = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(body)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_hash_of_each_inline_script_and_style() {
        let html = "<style>a{}</style><p><script>one()</script><script>two()</script>";
        let policy = policy(html);
        let hash = |text: &str| {
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
        };
        assert!(policy.contains(&format!(
            "script-src 'sha256-{}' 'sha256-{}';",
            hash("one()"),
            hash("two()")
        )));
        assert!(policy.contains(&format!("style-src 'sha256-{}';", hash("a{}"))));
        assert!(policy.starts_with("default-src 'none';"));
    }

    #[test]
    fn the_page_has_one_inline_script_and_one_style_and_nothing_external() {
        assert_eq!(inline_elements(PAGE, "script").count(), 1);
        assert_eq!(inline_elements(PAGE, "style").count(), 1);
        // Attributes on these tags would keep them out of the policy (and so off the page).
        assert!(
            !PAGE.contains("<script "),
            "script tags carry no attributes"
        );
        assert!(!PAGE.contains("<style "), "style tags carry no attributes");
        for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
            assert!(
                !PAGE.contains(external),
                "the page loads nothing: {external}"
            );
        }
    }
}
