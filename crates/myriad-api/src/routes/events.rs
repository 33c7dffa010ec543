//! `GET /api/v1/events`: the services' change events as Server-Sent Events.
//!
//! Each event is `event: <kind>` and `data: <JSON>` (see docs/console.md);
//! `: keep-alive` every [`KEEP_ALIVE`]; `event: lagged` with `{"missed": n}`
//! when the client fell more than the bus's capacity behind (it should
//! refetch what it shows). At most `api.max_event_streams` streams are open
//! at once (503 past it); every stream ends when the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use myriad_fleet::events::{EventKind, FleetEvent};
use myriad_fleet::registry::DeviceId;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;

use crate::console::StreamSlot;
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::ApiState;

/// How often a quiet stream gets a `: keep-alive` comment.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The kinds sent when `types` is not given (`ota` only when asked for).
const DEFAULT_KINDS: [EventKind; 5] = [
    EventKind::Presence,
    EventKind::Command,
    EventKind::Rollout,
    EventKind::Shadow,
    EventKind::Overview,
];

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsParams {
    /// Comma-separated kinds: `presence`, `command`, `rollout`, `shadow`,
    /// `overview`, `ota` (default: all but `ota`).
    types: Option<String>,
    /// Only the events of this device (rollout and overview events have none).
    device: Option<String>,
}

/// Which events a stream wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventFilter {
    kinds: Vec<EventKind>,
    device: Option<DeviceId>,
}

impl EventFilter {
    /// The filter of `types` and `device` (400 on an unknown kind or a bad id).
    pub(crate) fn parse(
        types: Option<&str>,
        device: Option<&str>,
    ) -> Result<EventFilter, ApiError> {
        let kinds = match types.filter(|t| !t.is_empty()) {
            None => DEFAULT_KINDS.to_vec(),
            Some(types) => {
                let mut kinds = Vec::new();
                for name in types.split(',').map(str::trim) {
                    let Some(kind) = EventKind::parse(name) else {
                        let shown: String = name.chars().take(32).collect();
                        return Err(ApiError::BadRequest(format!(
                            "types: unknown event type {shown:?} (known: presence, command, \
                             rollout, shadow, overview, ota)"
                        )));
                    };
                    if !kinds.contains(&kind) {
                        kinds.push(kind);
                    }
                }
                kinds
            }
        };
        let device = match device.filter(|d| !d.is_empty()) {
            None => None,
            Some(id) => Some(DeviceId::new(id).map_err(|reason| {
                let shown: String = id.chars().take(64).collect();
                ApiError::BadRequest(format!("device: device id {shown:?} {reason}"))
            })?),
        };
        Ok(EventFilter { kinds, device })
    }

    /// Whether `event` goes to the stream.
    pub(crate) fn accepts(&self, event: &FleetEvent) -> bool {
        if !self.kinds.contains(&event.kind()) {
            return false;
        }
        match &self.device {
            None => true,
            Some(device) => event.device() == Some(device.as_str()),
        }
    }
}

/// What a stream sends next.
#[derive(Debug, Clone, PartialEq)]
enum Next {
    /// An event the filter accepts.
    Event(Arc<FleetEvent>),
    /// The stream fell behind and lost this many events.
    Lagged(u64),
}

impl Next {
    /// As a Server-Sent Event.
    fn to_sse(&self) -> Event {
        match self {
            Next::Event(event) => Event::default()
                .event(event.kind().as_str())
                .data(event.to_json()),
            Next::Lagged(missed) => Event::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
        }
    }
}

/// A stream's state between events.
struct Feed {
    events: broadcast::Receiver<Arc<FleetEvent>>,
    filter: EventFilter,
    shutdown: CancellationToken,
    /// Held while the stream lives.
    _slot: Option<StreamSlot>,
}

impl Feed {
    /// What to send next; `None` ends the stream (shutdown, bus gone).
    async fn next(&mut self) -> Option<Next> {
        loop {
            let received = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                received = self.events.recv() => received,
            };
            match received {
                Ok(event) if self.filter.accepts(&event) => return Some(Next::Event(event)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(Next::Lagged(missed));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Live change events as Server-Sent Events: `presence`
/// `{"device","online","at_ms","reason"}`, `command` `{"id","device","status","at_ms"}`,
/// `rollout` `{"id","state","counts","at_ms"}`, `shadow` `{"device","version","at_ms"}`,
/// `overview` (one overview sample every 5 s), `ota` `{"device","rollout","state","version",
/// "at_ms"}` (only when asked for in `types`), and `lagged` `{"missed"}` when the client
/// fell behind. A `: keep-alive` comment every 15 s.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "console",
    params(EventsParams),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Unknown type or bad device id", body = ErrorBody),
        (status = 503, description = "api.max_event_streams streams are open", body = ErrorBody),
    )
)]
pub(crate) async fn events(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = EventFilter::parse(params.types.as_deref(), params.device.as_deref())?;
    let console = &state.console;
    let Some(slot) = console.open_stream() else {
        return Err(ApiError::Other {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "too many event streams open (api.max_event_streams = {}); retry later",
                console.max_event_streams
            ),
        });
    };
    let feed = Feed {
        events: console.bus.subscribe(),
        filter,
        shutdown: console.shutdown.clone(),
        _slot: Some(slot),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let next = feed.next().await?;
        Some((Ok(next.to_sse()), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use myriad_fleet::events::{PresenceChange, RolloutChange, ShadowChange};

    fn presence(device: &str) -> FleetEvent {
        FleetEvent::Presence(PresenceChange {
            device: device.into(),
            online: true,
            at_ms: 1,
            reason: None,
        })
    }

    fn rollout() -> FleetEvent {
        FleetEvent::Rollout(RolloutChange {
            id: "r".into(),
            state: "RUNNING".into(),
            counts: Default::default(),
            at_ms: 1,
        })
    }

    fn shadow(device: &str) -> FleetEvent {
        FleetEvent::Shadow(ShadowChange {
            device: device.into(),
            version: 1,
            at_ms: 1,
        })
    }

    #[test]
    fn the_default_takes_every_kind_but_ota() {
        let filter = EventFilter::parse(None, None).expect("default");
        assert!(filter.accepts(&presence("a")));
        assert!(filter.accepts(&rollout()));
        assert!(filter.accepts(&shadow("b")));
        let ota = FleetEvent::Ota(myriad_fleet::events::OtaChange {
            device: "a".into(),
            rollout: "r".into(),
            state: "NOTIFIED".into(),
            version: "1".into(),
            at_ms: 1,
        });
        assert!(!filter.accepts(&ota));
        assert!(
            EventFilter::parse(Some("ota"), None)
                .expect("ota")
                .accepts(&ota)
        );
    }

    #[test]
    fn types_and_device_narrow_the_stream() {
        let filter = EventFilter::parse(Some("presence, shadow"), Some("a")).expect("filter");
        assert!(filter.accepts(&presence("a")));
        assert!(filter.accepts(&shadow("a")));
        assert!(!filter.accepts(&presence("b")));
        // Rollouts belong to no device.
        assert!(!filter.accepts(&rollout()));
        let rollouts = EventFilter::parse(Some("rollout"), None).expect("filter");
        assert!(rollouts.accepts(&rollout()));
        assert!(!rollouts.accepts(&presence("a")));
    }

    fn feed(
        bus: &myriad_fleet::events::EventBus,
        filter: EventFilter,
    ) -> (Feed, CancellationToken) {
        let shutdown = CancellationToken::new();
        let feed = Feed {
            events: bus.subscribe(),
            filter,
            shutdown: shutdown.clone(),
            _slot: None,
        };
        (feed, shutdown)
    }

    #[tokio::test]
    async fn a_feed_skips_filtered_events_reports_lag_and_ends_at_shutdown() {
        let bus = myriad_fleet::events::EventBus::new(4);
        let filter = EventFilter::parse(Some("shadow"), None).expect("filter");
        let (mut feed, shutdown) = feed(&bus, filter);
        bus.publish(presence("a"));
        bus.publish(shadow("a"));
        assert_eq!(feed.next().await, Some(Next::Event(Arc::new(shadow("a")))));
        // Ten more than the bus holds: the feed is told how many it lost.
        for _ in 0..10 {
            bus.publish(shadow("b"));
        }
        assert_eq!(feed.next().await, Some(Next::Lagged(6)));
        assert_eq!(feed.next().await, Some(Next::Event(Arc::new(shadow("b")))));
        shutdown.cancel();
        // Ended at shutdown even with events waiting.
        assert_eq!(feed.next().await, None);
    }

    #[tokio::test]
    async fn a_feed_ends_when_the_bus_goes() {
        let bus = myriad_fleet::events::EventBus::new(4);
        let (mut feed, _shutdown) = feed(&bus, EventFilter::parse(None, None).expect("filter"));
        drop(bus);
        assert_eq!(feed.next().await, None);
    }

    #[test]
    fn lag_is_sent_as_a_lagged_event() {
        let text = format!("{:?}", Next::Lagged(7).to_sse());
        assert!(text.contains("event: lagged"), "{text}");
        assert!(text.contains(r#"data: {\"missed\":7}"#), "{text}");
    }

    #[test]
    fn unknown_types_and_bad_ids_are_refused() {
        for types in ["presence,bogus", "Presence", ",", "lagged"] {
            let error = EventFilter::parse(Some(types), None).expect_err(types);
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{types}");
        }
        let error = EventFilter::parse(None, Some("a/b")).expect_err("bad id");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(error.to_string().starts_with("device: "), "{error}");
    }
}
