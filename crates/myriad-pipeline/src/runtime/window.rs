//! The source's window: what it handed to the worker and has not acknowledged yet, in
//! arrival order. The worker reports records done in any order; a source acknowledges only
//! the done prefix (MQTT: PUBACKs in order; files: the checkpoint moves past a line only
//! once every line before it is done).

use std::collections::VecDeque;

use tokio::sync::mpsc;

/// Records handed out and not yet acknowledged, each with what acknowledging it takes
/// (`T`: a packet id, a file offset).
#[derive(Debug)]
pub(crate) struct Window<T> {
    entries: VecDeque<(u64, T, bool)>,
    next_seq: u64,
}

impl<T> Window<T> {
    /// An empty window; the first record gets sequence number 0.
    pub(crate) fn new() -> Window<T> {
        Window {
            entries: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// Adds a record; its sequence number (what the worker reports back).
    pub(crate) fn push(&mut self, token: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back((seq, token, false));
        seq
    }

    /// The token of `seq` if it is in the window.
    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut T> {
        let &(first, _, _) = self.entries.front()?;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.entries.get_mut(i).map(|entry| &mut entry.1)
    }

    /// Marks `seq` done (unknown or already acknowledged numbers are ignored).
    pub(crate) fn mark_done(&mut self, seq: u64) {
        let Some(&(first, _, _)) = self.entries.front() else {
            return;
        };
        if let Some(entry) = seq
            .checked_sub(first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.entries.get_mut(i))
        {
            entry.2 = true;
        }
    }

    /// Marks `seq` done, and every number already waiting on `reports` (a committed batch
    /// reports its records together: one acknowledgement covers them all).
    pub(crate) fn mark_reported(&mut self, seq: u64, reports: &mut mpsc::UnboundedReceiver<u64>) {
        self.mark_done(seq);
        while let Ok(seq) = reports.try_recv() {
            self.mark_done(seq);
        }
    }

    /// Takes the done records at the front, oldest first: what may be acknowledged now.
    pub(crate) fn take_done(&mut self) -> Vec<T> {
        let mut done = Vec::new();
        while self.entries.front().is_some_and(|e| e.2) {
            if let Some((_, token, _)) = self.entries.pop_front() {
                done.push(token);
            }
        }
        done
    }

    /// Records handed out and not acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn only_the_done_prefix_is_taken() {
        let mut w = Window::new();
        let (a, b, c) = (w.push('a'), w.push('b'), w.push('c'));
        w.mark_done(b);
        assert!(w.take_done().is_empty());
        w.mark_done(a);
        assert_eq!(w.take_done(), vec!['a', 'b']);
        w.mark_done(a); // acknowledged already: ignored
        w.mark_done(99);
        assert_eq!(w.len(), 1);
        w.mark_done(c);
        assert_eq!(w.take_done(), vec!['c']);
        assert_eq!(w.len(), 0);
    }
}
