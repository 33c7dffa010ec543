//! The API through `tower::ServiceExt::oneshot` on `router(state)`, over a
//! temporary fleet store.

mod accounts;
mod apps;
mod auth;
mod commands;
mod devices;
mod import;
mod observe;
mod openapi;
mod presence;
mod serve;
mod shadows;
mod support;
mod tls;
