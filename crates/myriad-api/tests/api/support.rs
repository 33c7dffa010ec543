//! A test server: a fleet store in a temporary directory, the services on
//! top of it, and helpers to call the router.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use myriad_api::{ApiState, router};
use myriad_fleet::commands::CommandsConfig;
use myriad_fleet::credentials::{HashParams, ThrottleConfig, VerifiedCache};
use myriad_fleet::service::auth::FleetAuthenticator;
use myriad_fleet::service::commands::CommandService;
use myriad_fleet::service::devices::DeviceAdmin;
use myriad_fleet::service::presence::PresenceService;
use myriad_fleet::service::shadows::ShadowService;
use myriad_fleet::shadow::ShadowLimits;
use myriad_fleet::store::FleetStore;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

/// The bearer token of the test server.
pub const TOKEN: &str = "test-token";

/// One test's server state.
pub struct Harness {
    pub state: ApiState,
    _dir: TempDir,
}

/// A response: status, headers and the body as JSON (`Value::Null` when
/// empty).
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Harness {
    /// A fresh, empty fleet. The broker's receiver is dropped: shadow
    /// publishes fail and are ignored by the shadow service.
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(FleetStore::open(dir.path()).expect("open store"));
        let (broker, events) = myriad_broker::shell::channel();
        drop(events);
        let shadows = Arc::new(ShadowService::new(
            store.clone(),
            broker.clone(),
            ShadowLimits::default(),
        ));
        let (presence, _) = PresenceService::recover(store.clone()).expect("presence");
        let presence = Arc::new(presence);
        let commands = CommandService::start(
            CommandsConfig::default(),
            store.clone(),
            broker.clone(),
            presence.clone(),
        )
        .expect("commands");
        let auth = Arc::new(FleetAuthenticator::new(
            store.clone(),
            false,
            ThrottleConfig::default(),
            VerifiedCache::new(1024).expect("cache"),
            myriad_fleet::service::auth::PasswordChecks::default(),
        ));
        let devices = Arc::new(DeviceAdmin::new(
            store.clone(),
            auth.clone(),
            presence.clone(),
            commands.clone(),
            broker.clone(),
        ));
        let certs = Arc::new(myriad_fleet::service::certs::CertificateService::new(
            store.clone(),
            auth.clone(),
            broker.clone(),
        ));
        let ota = Arc::new(
            myriad_fleet::service::ota::OtaService::open(
                store.clone(),
                broker.clone(),
                dir.path(),
                myriad_fleet::service::ota::OtaConfig::default(),
            )
            .expect("ota"),
        );
        let store_for_operators = store.clone();
        let state = ApiState {
            ota,
            certs,
            store,
            shadows,
            presence,
            commands,
            auth,
            devices,
            telemetry: None,
            hash_params: HashParams::INSECURE_FAST,
            token: TOKEN.into(),
            tls_reload: std::sync::Arc::new(Vec::new),
            pipelines: std::sync::Arc::new(myriad_api::pipelines::FixedPipelines::default()),
            operators: Arc::new(
                myriad_fleet::operators::Operators::open(
                    store_for_operators.clone(),
                    myriad_fleet::operators::OperatorsConfig {
                        hash_params: HashParams::INSECURE_FAST,
                        ..Default::default()
                    },
                )
                .expect("operators"),
            ),
            audit: myriad_fleet::operators::AuditLog::start(store_for_operators, 1_000),
            secure_cookies: false,
            debug: None,
            console: myriad_api::Console::new(
                myriad_fleet::events::EventBus::default(),
                Arc::default(),
                broker.clone(),
            ),
        };
        Harness { state, _dir: dir }
    }

    /// Sends `request` to a fresh router over this state.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = router(self.state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&bytes)))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// An authorized request with an optional JSON body.
    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        };
        self.send(request.expect("request")).await
    }

    /// An authorized request with a raw body and content type.
    pub async fn call_raw(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .expect("request");
        self.send(request).await
    }

    /// GET with the token.
    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None).await
    }

    /// Creates device `id` (no password) and checks the 201.
    pub async fn create_device(&self, id: &str) -> Value {
        let reply = self
            .call(
                Method::POST,
                "/api/v1/devices",
                Some(serde_json::json!({ "id": id })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }
}

/// Checks that `reply` is an error with `status` in the API's shape, and
/// returns its message.
pub fn assert_error(reply: &Reply, status: StatusCode) -> String {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16(), "{}", reply.body);
    let message = reply.body["message"].as_str().expect("a message");
    assert!(!message.is_empty());
    assert_eq!(
        reply.body.as_object().map(|o| o.len()),
        Some(2),
        "only status and message: {}",
        reply.body
    );
    message.to_string()
}
