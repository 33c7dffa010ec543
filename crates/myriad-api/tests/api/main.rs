//! The API through `tower::ServiceExt::oneshot` on `router(state)`, over a
//! temporary fleet store.

mod apps;
mod auth;
mod devices;
mod openapi;
mod presence;
mod shadows;
mod support;
