//! Delivery receipts: the core reports when a client acknowledged (PUBACK,
//! or PUBCOMP for QoS 2) a message whose topic starts with a chosen prefix.
//!
//! The device layer sends commands to devices through an in-process client;
//! the device's PUBACK goes to the broker, not to that client. A receipt
//! tells the command service that the command reached the device. Off by
//! default ([`Broker::set_delivery_receipts`]); only topics under the prefix
//! cost a look-up.

use bytes::Bytes;
use myriad_mqtt::ByteString;

use super::session::InflightState;
use super::{Broker, ConnId, Output, SessionId};

/// A client acknowledged a message under the receipt prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReceipt {
    /// The connection that acknowledged it.
    pub conn: ConnId,
    /// The client identifier of its session.
    pub client_id: ByteString,
    /// The message's topic.
    pub topic: ByteString,
    /// The message's Correlation Data as published (kept even when the
    /// client speaks 3.1.1 and never saw it).
    pub correlation_data: Option<Bytes>,
}

impl Broker {
    /// Reports [`Output::Delivered`] for acknowledged messages whose topic
    /// starts with `prefix` (`None`, the default: no receipts).
    pub fn set_delivery_receipts(&mut self, prefix: Option<String>) {
        self.receipt_prefix = prefix;
    }

    /// The receipt for the flow `packet_id` of `session`, if receipts are on
    /// and its message is under the prefix. Call before the flow is closed.
    pub(super) fn receipt_for(
        &self,
        conn: ConnId,
        session: SessionId,
        packet_id: u16,
    ) -> Option<DeliveryReceipt> {
        let prefix = self.receipt_prefix.as_deref()?;
        let session = self.sessions.get(session)?;
        let flow = session
            .outbound()
            .inflight()
            .iter()
            .find(|f| f.packet_id == packet_id)?;
        let InflightState::Published(delivery) = &flow.state else {
            return None;
        };
        let message = &delivery.message;
        if !message.topic.starts_with(prefix) {
            return None;
        }
        Some(DeliveryReceipt {
            conn,
            client_id: session.client_id.clone(),
            topic: message.topic.clone(),
            correlation_data: message.properties.correlation_data.clone(),
        })
    }

    /// Queues the receipt, if any.
    pub(super) fn emit_receipt(&mut self, receipt: Option<DeliveryReceipt>) {
        if let Some(receipt) = receipt {
            self.outputs.push_back(Output::Delivered(receipt));
        }
    }
}
