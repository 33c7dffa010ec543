//! The command log writer: one thread that stores command records in
//! batches (one transaction and one `fsync` for everything queued since
//! the last commit), so status changes never wait for the disk one by one.
//!
//! Records not yet committed stay readable through [`CommandLog::pending`],
//! and callers that need durability (an accepted L1 command) wait for
//! their sequence number with [`CommandLog::committed`].

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tracing::error;

use crate::commands::{Command, CommandId};
use crate::store::FleetStore;

/// Most records in one commit.
const MAX_BATCH: usize = 2_048;

/// Handle to the writer thread.
#[derive(Debug)]
pub struct CommandLog {
    sender: Mutex<std_mpsc::Sender<(u64, Command)>>,
    pending: Arc<Mutex<Pending>>,
    committed: watch::Receiver<u64>,
}

#[derive(Debug, Default)]
struct Pending {
    next_seq: u64,
    records: HashMap<CommandId, (u64, Command)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl CommandLog {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<FleetStore>) -> std::io::Result<CommandLog> {
        let (sender, receiver) = std_mpsc::channel::<(u64, Command)>();
        let (committed_tx, committed) = watch::channel(0u64);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let thread_pending = pending.clone();
        std::thread::Builder::new()
            .name("command-log".into())
            .spawn(move || write_loop(store, receiver, committed_tx, thread_pending))?;
        Ok(CommandLog {
            sender: Mutex::new(sender),
            pending,
            committed,
        })
    }

    /// Queues `command` for storing; returns its sequence number.
    pub fn write(&self, command: Command) -> u64 {
        let seq = {
            let mut pending = lock(&self.pending);
            pending.next_seq += 1;
            let seq = pending.next_seq;
            pending
                .records
                .insert(command.id.clone(), (seq, command.clone()));
            seq
        };
        if lock(&self.sender).send((seq, command)).is_err() {
            error!("the command log writer stopped; command changes are not stored");
        }
        seq
    }

    /// The sequence number of the last record queued.
    pub fn last_seq(&self) -> u64 {
        lock(&self.pending).next_seq
    }

    /// The latest version of `id` not yet committed.
    pub fn pending(&self, id: &CommandId) -> Option<Command> {
        lock(&self.pending).records.get(id).map(|(_, c)| c.clone())
    }

    /// Waits while more than `backlog` records wait to be committed, so a
    /// fan-out paces itself on the disk instead of queuing without bound;
    /// false if the writer stopped.
    pub async fn wait_backlog(&self, backlog: u64) -> bool {
        let target = lock(&self.pending).next_seq.saturating_sub(backlog);
        self.committed(target).await
    }

    /// Waits until every record up to `seq` is committed; false if the
    /// writer stopped first.
    pub async fn committed(&self, seq: u64) -> bool {
        let mut committed = self.committed.clone();
        committed.wait_for(|done| *done >= seq).await.is_ok()
    }
}

fn write_loop(
    store: Arc<FleetStore>,
    receiver: std_mpsc::Receiver<(u64, Command)>,
    committed: watch::Sender<u64>,
    pending: Arc<Mutex<Pending>>,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let last_seq = batch.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        // Only the newest version of each command in the batch is written.
        let mut newest: HashMap<&CommandId, &Command> = HashMap::new();
        for (_, command) in &batch {
            newest.insert(&command.id, command);
        }
        let records: Vec<Command> = newest.into_values().cloned().collect();
        if let Err(error) = store.put_commands(&records) {
            error!(%error, "cannot store command records");
        }
        {
            let mut pending = lock(&pending);
            for (seq, command) in &batch {
                if pending
                    .records
                    .get(&command.id)
                    .is_some_and(|(s, _)| s == seq)
                {
                    pending.records.remove(&command.id);
                }
            }
        }
        let _ = committed.send(last_seq);
    }
}
