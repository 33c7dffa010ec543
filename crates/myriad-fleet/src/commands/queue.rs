//! Per-device ordered queues of L1 commands: only the head of a device's
//! queue is ever sent, the next one once the head is final, so a device
//! receives its critical commands in the order they were accepted.

use std::collections::{HashMap, VecDeque};

use super::model::CommandId;

/// The L1 queues of all devices (ids only; the records live elsewhere).
#[derive(Debug, Default, Clone)]
pub struct DeviceQueues {
    queues: HashMap<String, VecDeque<CommandId>>,
    len: usize,
}

impl DeviceQueues {
    /// Empty queues.
    pub fn new() -> DeviceQueues {
        DeviceQueues::default()
    }

    /// Appends `id` to the queue of `device`; true if it is the head now.
    pub fn push(&mut self, device: &str, id: CommandId) -> bool {
        let queue = self.queues.entry(device.to_string()).or_default();
        queue.push_back(id);
        self.len += 1;
        queue.len() == 1
    }

    /// The command at the head of the queue of `device`.
    pub fn head(&self, device: &str) -> Option<&CommandId> {
        self.queues.get(device).and_then(|q| q.front())
    }

    /// Whether `id` is the head of the queue of `device`.
    pub fn is_head(&self, device: &str, id: &CommandId) -> bool {
        self.head(device) == Some(id)
    }

    /// Removes `id` wherever it is in the queue of `device`; returns the
    /// new head if `id` was the head.
    pub fn remove(&mut self, device: &str, id: &CommandId) -> Option<CommandId> {
        let queue = self.queues.get_mut(device)?;
        let position = queue.iter().position(|q| q == id)?;
        queue.remove(position);
        self.len -= 1;
        let next = if position == 0 {
            queue.front().cloned()
        } else {
            None
        };
        if queue.is_empty() {
            self.queues.remove(device);
        }
        next
    }

    /// Commands queued for all devices.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no command is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Devices with a non-empty queue.
    pub fn device_count(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> CommandId {
        CommandId::generate(n)
    }

    #[test]
    fn fifo_per_device_with_removal_anywhere() {
        let mut q = DeviceQueues::new();
        let (a, b, c) = (id(1), id(2), id(3));
        assert!(q.push("d", a.clone()));
        assert!(!q.push("d", b.clone()));
        assert!(!q.push("d", c.clone()));
        assert!(q.push("e", id(4)));
        assert_eq!(q.len(), 4);
        // Removing from the middle leaves the head alone.
        assert_eq!(q.remove("d", &b), None);
        assert!(q.is_head("d", &a));
        // Removing the head promotes the next one.
        assert_eq!(q.remove("d", &a), Some(c.clone()));
        assert_eq!(q.remove("d", &c), None);
        assert_eq!(q.head("d"), None);
        assert_eq!(q.device_count(), 1);
        assert_eq!(q.remove("nobody", &c), None);
    }
}
