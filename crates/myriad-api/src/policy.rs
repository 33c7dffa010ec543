//! The one table of who may call what: HTTP method and route pattern (as
//! the router matched it) -> the least role, or "the user named in the
//! path, or an admin". A route missing from the table is refused (403)
//! for everyone; a unit test checks that every route of the router has an
//! entry, so a new route cannot be forgotten.

use axum::http::Method;
use myriad_fleet::operators::Role;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Callers with at least this role.
    AtLeast(Role),
    /// The user named by the `{name}` path parameter, or an admin.
    SelfOrAdmin,
}

use Role::{Admin, Operator, Viewer};
use Rule::{AtLeast, SelfOrAdmin};

/// Method, route pattern, rule. `HEAD` follows `GET`.
pub(crate) const POLICY: &[(&str, &str, Rule)] = &[
    // Accounts.
    ("GET", "/api/v1/session", AtLeast(Viewer)),
    ("POST", "/api/v1/logout", AtLeast(Viewer)),
    ("GET", "/api/v1/users", AtLeast(Admin)),
    ("POST", "/api/v1/users", AtLeast(Admin)),
    ("GET", "/api/v1/users/{name}", SelfOrAdmin),
    ("PATCH", "/api/v1/users/{name}", AtLeast(Admin)),
    ("DELETE", "/api/v1/users/{name}", AtLeast(Admin)),
    ("PUT", "/api/v1/users/{name}/password", SelfOrAdmin),
    ("GET", "/api/v1/users/{name}/tokens", SelfOrAdmin),
    ("POST", "/api/v1/users/{name}/tokens", SelfOrAdmin),
    ("DELETE", "/api/v1/users/{name}/tokens/{id}", SelfOrAdmin),
    ("GET", "/api/v1/audit", AtLeast(Admin)),
    // Profiles and task counts: what they reveal (allocation sites, code paths) and cost
    // (sampling) is for admins only.
    ("GET", "/debug/pprof/heap", AtLeast(Admin)),
    ("GET", "/debug/pprof/heap/active", AtLeast(Admin)),
    ("PUT", "/debug/pprof/heap/active", AtLeast(Admin)),
    ("GET", "/debug/pprof/profile", AtLeast(Admin)),
    ("GET", "/debug/tasks", AtLeast(Admin)),
    // Devices.
    ("GET", "/api/v1/devices", AtLeast(Viewer)),
    ("POST", "/api/v1/devices", AtLeast(Operator)),
    ("POST", "/api/v1/devices/import", AtLeast(Operator)),
    ("GET", "/api/v1/devices/import", AtLeast(Viewer)),
    ("PATCH", "/api/v1/devices/import", AtLeast(Operator)),
    ("DELETE", "/api/v1/devices/import", AtLeast(Operator)),
    ("GET", "/api/v1/devices/{id}", AtLeast(Viewer)),
    ("PATCH", "/api/v1/devices/{id}", AtLeast(Operator)),
    ("DELETE", "/api/v1/devices/{id}", AtLeast(Operator)),
    ("PUT", "/api/v1/devices/{id}/password", AtLeast(Operator)),
    ("POST", "/api/v1/devices/{id}/disconnect", AtLeast(Operator)),
    ("GET", "/api/v1/devices/{id}/presence", AtLeast(Viewer)),
    ("GET", "/api/v1/groups", AtLeast(Viewer)),
    ("GET", "/api/v1/presence", AtLeast(Viewer)),
    ("GET", "/api/v1/presence/count", AtLeast(Viewer)),
    // Device certificates and CAs.
    ("GET", "/api/v1/devices/{id}/certificates", AtLeast(Viewer)),
    ("POST", "/api/v1/devices/{id}/certificates", AtLeast(Admin)),
    (
        "DELETE",
        "/api/v1/devices/{id}/certificates/{fingerprint}",
        AtLeast(Admin),
    ),
    ("GET", "/api/v1/cas", AtLeast(Viewer)),
    ("POST", "/api/v1/cas", AtLeast(Admin)),
    ("DELETE", "/api/v1/cas/{fingerprint}", AtLeast(Admin)),
    ("PUT", "/api/v1/cas/{fingerprint}/crl", AtLeast(Admin)),
    ("POST", "/api/v1/tls/reload", AtLeast(Admin)),
    // Shadows.
    ("GET", "/api/v1/devices/{id}/shadow", AtLeast(Viewer)),
    ("PATCH", "/api/v1/devices/{id}/shadow", AtLeast(Operator)),
    ("DELETE", "/api/v1/devices/{id}/shadow", AtLeast(Operator)),
    // Commands.
    ("GET", "/api/v1/devices/{id}/commands", AtLeast(Viewer)),
    ("POST", "/api/v1/devices/{id}/commands", AtLeast(Operator)),
    ("POST", "/api/v1/commands", AtLeast(Operator)),
    ("GET", "/api/v1/commands/breakers", AtLeast(Viewer)),
    ("GET", "/api/v1/commands/{command_id}", AtLeast(Viewer)),
    ("DELETE", "/api/v1/commands/{command_id}", AtLeast(Operator)),
    ("GET", "/api/v1/command-batches/{batch_id}", AtLeast(Viewer)),
    (
        "DELETE",
        "/api/v1/command-batches/{batch_id}",
        AtLeast(Operator),
    ),
    // Apps and ACLs.
    ("GET", "/api/v1/apps", AtLeast(Viewer)),
    ("POST", "/api/v1/apps", AtLeast(Admin)),
    ("GET", "/api/v1/apps/{id}", AtLeast(Viewer)),
    ("PATCH", "/api/v1/apps/{id}", AtLeast(Admin)),
    ("DELETE", "/api/v1/apps/{id}", AtLeast(Admin)),
    // Telemetry (reads; writes are admin).
    ("GET", "/api/v1/devices/{id}/telemetry", AtLeast(Viewer)),
    (
        "GET",
        "/api/v1/devices/{id}/telemetry/latest",
        AtLeast(Viewer),
    ),
    (
        "GET",
        "/api/v1/devices/{id}/telemetry/export",
        AtLeast(Viewer),
    ),
    ("GET", "/api/v1/telemetry", AtLeast(Viewer)),
    ("POST", "/api/v1/telemetry/write", AtLeast(Admin)),
    ("POST", "/write", AtLeast(Admin)),
    ("POST", "/api/v2/write", AtLeast(Admin)),
    ("GET", "/api/v1/query_range", AtLeast(Viewer)),
    ("POST", "/api/v1/query_range", AtLeast(Viewer)),
    ("GET", "/api/v1/query", AtLeast(Viewer)),
    ("POST", "/api/v1/query", AtLeast(Viewer)),
    ("GET", "/api/v1/series", AtLeast(Viewer)),
    ("POST", "/api/v1/series", AtLeast(Viewer)),
    ("GET", "/api/v1/labels", AtLeast(Viewer)),
    ("POST", "/api/v1/labels", AtLeast(Viewer)),
    ("GET", "/api/v1/label/{name}/values", AtLeast(Viewer)),
    ("GET", "/api/v1/status/buildinfo", AtLeast(Viewer)),
    ("GET", "/api/v1/metadata", AtLeast(Viewer)),
    // OTA.
    ("GET", "/api/v1/ota/artifacts", AtLeast(Viewer)),
    ("POST", "/api/v1/ota/artifacts", AtLeast(Operator)),
    ("GET", "/api/v1/ota/artifacts/{id}", AtLeast(Viewer)),
    ("DELETE", "/api/v1/ota/artifacts/{id}", AtLeast(Operator)),
    ("GET", "/api/v1/ota/artifacts/{id}/content", AtLeast(Viewer)),
    ("GET", "/api/v1/ota/deltas", AtLeast(Viewer)),
    ("POST", "/api/v1/ota/deltas", AtLeast(Operator)),
    ("GET", "/api/v1/ota/deltas/{id}", AtLeast(Viewer)),
    ("GET", "/api/v1/ota/deltas/{id}/content", AtLeast(Viewer)),
    ("GET", "/api/v1/ota/signing-key", AtLeast(Viewer)),
    ("GET", "/api/v1/ota/rollouts", AtLeast(Viewer)),
    ("POST", "/api/v1/ota/rollouts", AtLeast(Operator)),
    ("GET", "/api/v1/ota/rollouts/{id}", AtLeast(Viewer)),
    ("GET", "/api/v1/ota/rollouts/{id}/devices", AtLeast(Viewer)),
    ("POST", "/api/v1/ota/rollouts/{id}/pause", AtLeast(Operator)),
    (
        "POST",
        "/api/v1/ota/rollouts/{id}/resume",
        AtLeast(Operator),
    ),
    (
        "POST",
        "/api/v1/ota/rollouts/{id}/cancel",
        AtLeast(Operator),
    ),
    // Pipelines.
    ("GET", "/api/v1/pipelines", AtLeast(Viewer)),
    ("GET", "/api/v1/pipelines/{name}", AtLeast(Viewer)),
    ("PUT", "/api/v1/pipelines/{name}", AtLeast(Admin)),
    ("DELETE", "/api/v1/pipelines/{name}", AtLeast(Admin)),
    ("POST", "/api/v1/pipelines/{name}/records", AtLeast(Admin)),
    // Console data (issue 21, helper console-api).
    ("GET", "/api/v1/events", AtLeast(Viewer)),
    ("GET", "/api/v1/overview", AtLeast(Viewer)),
    ("GET", "/api/v1/devices/{id}/session", AtLeast(Viewer)),
    ("GET", "/api/v1/devices/{id}/events", AtLeast(Viewer)),
    ("GET", "/api/v1/devices/{id}/ota", AtLeast(Viewer)),
    ("GET", "/api/v1/retained", AtLeast(Viewer)),
    ("DELETE", "/api/v1/retained", AtLeast(Operator)),
];

/// POST routes not written to the audit log: those that only read (query
/// forms of the Prometheus API), and the data plane's ingest routes
/// (telemetry writes, records into a pipeline), which a busy writer calls
/// many times a second: logging them would trim every operator action out
/// of the capped log within hours. Who may call them is still checked.
const UNAUDITED_POSTS: &[&str] = &[
    "/api/v1/query_range",
    "/api/v1/query",
    "/api/v1/series",
    "/api/v1/labels",
    "/api/v1/telemetry/write",
    "/write",
    "/api/v2/write",
    "/api/v1/pipelines/{name}/records",
];

/// The rule for `method` on route `pattern`; `None`: no entry (refuse).
pub(crate) fn rule(method: &Method, pattern: &str) -> Option<Rule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    POLICY
        .iter()
        .find(|(m, p, _)| *m == method && *p == pattern)
        .map(|(_, _, rule)| *rule)
}

/// Whether a request changes state (needs the CSRF token with a cookie).
pub(crate) fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a request goes to the audit log: it changes state and is not
/// one of [`UNAUDITED_POSTS`].
pub(crate) fn audited(method: &Method, pattern: Option<&str>) -> bool {
    changes_state(method)
        && !(method == Method::POST && pattern.is_some_and(|p| UNAUDITED_POSTS.contains(&p)))
}

/// Whether `role` (of user `username`) may call a route with `rule`, where
/// `path_name` is the route's `{name}` parameter if it has one.
pub(crate) fn allows(rule: Rule, role: Role, username: &str, path_name: Option<&str>) -> bool {
    match rule {
        AtLeast(least) => role >= least,
        SelfOrAdmin => role == Admin || path_name == Some(username),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_by_role() {
        let get = Method::GET;
        let post = Method::POST;
        let r = rule(&post, "/api/v1/devices").unwrap();
        assert!(!allows(r, Viewer, "v", None));
        assert!(allows(r, Operator, "o", None));
        assert!(allows(r, Admin, "a", None));
        let r = rule(&post, "/api/v1/apps").unwrap();
        assert!(!allows(r, Operator, "o", None));
        let r = rule(&get, "/api/v1/audit").unwrap();
        assert!(!allows(r, Operator, "o", None));
        assert!(allows(r, Admin, "a", None));
        let r = rule(&Method::HEAD, "/api/v1/devices").unwrap();
        assert!(allows(r, Viewer, "v", None));
        let r = rule(&get, "/api/v1/users/{name}").unwrap();
        assert!(allows(r, Viewer, "v", Some("v")));
        assert!(!allows(r, Viewer, "v", Some("w")));
        assert!(!allows(r, Operator, "o", Some("w")));
        assert!(allows(r, Admin, "a", Some("w")));
        assert_eq!(rule(&get, "/api/v1/nope"), None);
        assert_eq!(rule(&Method::PUT, "/api/v1/devices"), None);
    }

    /// Every route of the router (those in the OpenAPI document, and the
    /// few added without one) has an entry: a new route cannot be forgotten.
    #[test]
    fn every_route_has_a_policy_entry() {
        let (_, protected) = crate::routes::protected_routes().split_for_parts();
        let (_, influx) = crate::routes::influx_routes().split_for_parts();
        let mut checked = 0;
        for (path, item) in protected
            .paths
            .paths
            .iter()
            .chain(influx.paths.paths.iter())
        {
            for (method, operation) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
                (Method::HEAD, &item.head),
                (Method::OPTIONS, &item.options),
            ] {
                if operation.is_some() {
                    assert!(
                        rule(&method, path).is_some(),
                        "no policy for {method} {path}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 88, "only {checked} routes seen");
        // Added with `.route` (not documented): the device named `import`.
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            assert!(rule(&method, "/api/v1/devices/import").is_some());
        }
    }

    #[test]
    fn no_duplicate_entries_and_audit_skips_queries_and_ingest() {
        for (i, (m, p, _)) in POLICY.iter().enumerate() {
            assert!(
                !POLICY[i + 1..].iter().any(|(m2, p2, _)| m2 == m && p2 == p),
                "{m} {p} twice"
            );
        }
        assert!(!audited(&Method::POST, Some("/api/v1/query")));
        assert!(!audited(&Method::POST, Some("/api/v2/write")));
        assert!(audited(&Method::PUT, Some("/api/v1/pipelines/{name}")));
        assert!(audited(&Method::POST, Some("/api/v1/devices")));
        assert!(audited(&Method::DELETE, None));
        assert!(!audited(&Method::GET, Some("/api/v1/devices")));
    }
}
