//! What the OpenAPI document knows about each route, for the middleware that runs outside it:
//! the documented template of a matched route (metrics labels) and the methods it allows (the
//! `Allow` header RFC 9110 requires on 405).
//!
//! poem-openapi routes `/users/{id}` internally as `/users/:param0`; requests carry that
//! internal pattern, so the table is keyed by it.

use std::collections::HashMap;

/// One route of the API.
#[derive(Debug, Clone)]
struct Route {
    /// The template as documented, e.g. `/api/v1/users/{id}`.
    documented: String,
    /// `DELETE, GET, HEAD, PUT`: the methods the route answers, sorted.
    allow: String,
}

/// Routes by internal pattern. Built once at start-up from the OpenAPI document.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Internal pattern → route.
    routes: HashMap<String, Route>,
}

impl RouteTable {
    /// The table for an OpenAPI document's `paths` object (`{path: {method: operation}}`).
    pub fn from_paths(paths: &serde_json::Map<String, serde_json::Value>) -> Self {
        let routes = paths
            .iter()
            .map(|(path, operations)| {
                let mut methods: Vec<String> = operations
                    .as_object()
                    .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
                    .unwrap_or_default();
                if methods.iter().any(|m| m == "GET") {
                    methods.push("HEAD".into());
                }
                methods.sort();
                let route = Route {
                    documented: path.clone(),
                    allow: methods.join(", "),
                };
                (internal_pattern(path), route)
            })
            .collect();
        Self { routes }
    }

    /// The metrics label for a matched pattern: its documented template.
    pub fn label<'a>(&'a self, pattern: &'a str) -> &'a str {
        self.routes
            .get(pattern)
            .map_or(pattern, |r| r.documented.as_str())
    }

    /// The `Allow` header value for a matched pattern.
    pub fn allowed(&self, pattern: &str) -> Option<&str> {
        self.routes.get(pattern).map(|r| r.allow.as_str())
    }
}

/// poem-openapi numbers path parameters in order: `/a/{x}/b/{y}` is routed as
/// `/a/:param0/b/:param1`.
fn internal_pattern(documented: &str) -> String {
    let mut next = 0;
    documented
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                next += 1;
                format!(":param{}", next - 1)
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn internal_patterns_map_back_to_documented_templates_and_methods() {
        let paths = json!({
            "/api/v1/users/{id}": {"get": {}, "put": {}, "delete": {}},
            "/a/{x}/b/{y}": {"post": {}},
            "/health": {"get": {}},
        });
        let table = RouteTable::from_paths(paths.as_object().unwrap());
        assert_eq!(table.label("/api/v1/users/:param0"), "/api/v1/users/{id}");
        assert_eq!(table.label("/a/:param0/b/:param1"), "/a/{x}/b/{y}");
        assert_eq!(table.label("/health"), "/health");
        assert_eq!(table.label("/other"), "/other");
        assert_eq!(
            table.allowed("/api/v1/users/:param0"),
            Some("DELETE, GET, HEAD, PUT")
        );
        assert_eq!(table.allowed("/a/:param0/b/:param1"), Some("POST"));
        assert_eq!(table.allowed("/nope"), None);
    }
}
