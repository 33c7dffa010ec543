//! An in-memory file system with power cuts, for tests of the SDK cores (and of code built on
//! them): it keeps what a real disk would keep apart from what it has been told to make
//! durable, so a test can cut the power after any operation and "reboot" onto what survived.
//!
//! The model: a file's bytes are durable up to its last sync (an `fsync`, or
//! [`Fs::write_synced`]); a name (created, renamed, removed) is durable once the directory
//! holding it was synced. At a power cut ([`MemFs::crash`]) every name returns to its durable
//! state and every file to its synced bytes plus, when the file only grew since, a random part
//! of the unsynced tail and, sometimes, a few garbage bytes (a torn append).
//!
//! [`MemFs::cut_after`] arms the cut: after that many more operations every operation fails,
//! and the one that crosses the line does part of its work (half of a write) before failing.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{AppendFile, Fs, LogFs, SlotFile};

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    names: BTreeMap<PathBuf, usize>,
    durable: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    inodes: Vec<Inode>,
    ops: u64,
    cut_at: Option<u64>,
    dead: bool,
    rng: u64,
}

impl State {
    /// Counts one operation: `Err` once the power is off; `Ok(true)` when this operation is
    /// the one cut short.
    fn tick(&mut self) -> io::Result<bool> {
        if self.dead {
            return Err(cut());
        }
        self.ops += 1;
        if self.cut_at == Some(self.ops) {
            self.dead = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn inode(&self, path: &Path) -> io::Result<usize> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display())))
    }

    fn new_inode(&mut self) -> usize {
        self.inodes.push(Inode::default());
        self.inodes.len() - 1
    }
}

fn cut() -> io::Error {
    io::Error::other("power cut")
}

/// The in-memory file system; clones share the same disk.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

impl MemFs {
    /// An empty disk; `seed` drives how much of an unsynced tail survives a cut.
    pub fn new(seed: u64) -> MemFs {
        let fs = MemFs::default();
        fs.lock().rng = seed;
        fs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock poisons it; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the power after `n` more operations (`0`: the next operation fails).
    pub fn cut_after(&self, n: u64) {
        let mut s = self.lock();
        s.cut_at = Some(s.ops + n + 1);
    }

    /// Disarms a cut that has not happened yet.
    pub fn disarm(&self) {
        self.lock().cut_at = None;
    }

    /// Whether the power is off (an armed cut has happened).
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Operations counted so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// The power cut and the reboot: names back to their durable state, files to their
    /// synced bytes plus maybe part of an unsynced tail; the power is on again.
    pub fn crash(&self) {
        let mut s = self.lock();
        s.names = s.durable.clone();
        for i in 0..s.inodes.len() {
            let (data, synced) = (s.inodes[i].data.clone(), s.inodes[i].synced.clone());
            let mut keep = synced.clone();
            if data.len() > synced.len() && data.starts_with(&synced) {
                let extra = data.len() - synced.len();
                let r = s.next_rand();
                let n = (r % (extra as u64 + 1)) as usize;
                keep.extend_from_slice(&data[synced.len()..synced.len() + n]);
                if r >> 60 == 0 {
                    // Sometimes a few bytes of garbage past what was written.
                    let g = s.next_rand().to_le_bytes();
                    keep.extend_from_slice(&g[..(r >> 56) as usize % 8]);
                }
            }
            s.inodes[i] = Inode {
                data: keep.clone(),
                synced: keep,
            };
        }
        s.dead = false;
        s.cut_at = None;
    }

    /// The bytes of a file as the running system sees them (`None`: no such file).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        s.names.get(path).map(|&i| s.inodes[i].data.clone())
    }

    /// Writes a file and makes it (and its name) durable at once, bypassing the operation
    /// count: to plant damaged files in a test.
    pub fn put(&self, path: &Path, data: &[u8]) {
        let mut s = self.lock();
        let i = match s.names.get(path) {
            Some(&i) => i,
            None => s.new_inode(),
        };
        s.inodes[i] = Inode {
            data: data.to_vec(),
            synced: data.to_vec(),
        };
        s.names.insert(path.to_path_buf(), i);
        s.durable.insert(path.to_path_buf(), i);
        if let Some(parent) = path.parent() {
            s.dirs.insert(parent.to_path_buf());
        }
    }
}

struct MemFile {
    fs: MemFs,
    inode: usize,
}

impl AppendFile for MemFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut s = self.fs.lock();
        let torn = s.tick()?;
        let n = if torn { data.len() / 2 } else { data.len() };
        s.inodes[self.inode].data.extend_from_slice(&data[..n]);
        if torn { Err(cut()) } else { Ok(()) }
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.fs.lock();
        if s.tick()? {
            return Err(cut());
        }
        let data = s.inodes[self.inode].data.clone();
        s.inodes[self.inode].synced = data;
        Ok(())
    }
}

impl SlotFile for MemFile {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        if s.tick()? {
            return Err(cut());
        }
        let data = &s.inodes[self.inode].data;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        match data.get(start..start + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn write_all_at(&mut self, src: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        let torn = s.tick()?;
        let src = if torn { &src[..src.len() / 2] } else { src };
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let data = &mut s.inodes[self.inode].data;
        if data.len() < start + src.len() {
            data.resize(start + src.len(), 0);
        }
        data[start..start + src.len()].copy_from_slice(src);
        // An overwrite in place is not an append: the cut keeps only the synced bytes.
        if torn { Err(cut()) } else { Ok(()) }
    }

    fn sync(&mut self) -> io::Result<()> {
        AppendFile::sync(self)
    }
}

impl Fs for MemFs {
    fn open_slot(&self, path: &Path, write: bool) -> io::Result<Box<dyn SlotFile>> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        let inode = match (s.names.get(path).copied(), write) {
            (Some(i), _) => i,
            (None, true) => {
                let i = s.new_inode();
                s.names.insert(path.to_path_buf(), i);
                i
            }
            (None, false) => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Box::new(MemFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        let torn = s.tick()?;
        let data = if torn { &data[..data.len() / 2] } else { data };
        let i = match s.names.get(path) {
            Some(&i) => i,
            None => {
                let i = s.new_inode();
                s.names.insert(path.to_path_buf(), i);
                i
            }
        };
        s.inodes[i] = Inode {
            data: data.to_vec(),
            synced: data.to_vec(),
        };
        if torn { Err(cut()) } else { Ok(()) }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        let i = s.inode(from)?;
        s.names.remove(from);
        s.names.insert(to.to_path_buf(), i);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        let in_dir = |p: &Path| p.parent() == Some(dir);
        s.durable.retain(|p, _| !in_dir(p));
        let names: Vec<(PathBuf, usize)> = s
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        s.durable.extend(names);
        Ok(())
    }

    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        let Some(&i) = s.names.get(path) else {
            return Ok(None);
        };
        let data = &s.inodes[i].data;
        if data.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("longer than {limit} bytes"),
            ));
        }
        Ok(Some(data.clone()))
    }
}

impl LogFs for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        s.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        if !s.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        let i = s.inode(path)?;
        Ok(s.inodes[i].data.len() as u64)
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        let i = s.inode(path)?;
        let data = &s.inodes[i].data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile + Send>> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        let inode = match s.names.get(path) {
            Some(&i) => i,
            None => {
                let i = s.new_inode();
                s.names.insert(path.to_path_buf(), i);
                i
            }
        };
        Ok(Box::new(MemFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        let i = s.inode(path)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let inode = &mut s.inodes[i];
        inode.data.truncate(len);
        inode.synced = inode.data.clone();
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(cut());
        }
        s.inode(path)?;
        s.names.remove(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_names_and_bytes_do_not_survive_a_cut() {
        let fs = MemFs::new(1);
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let a = dir.join("a");
        let mut f = fs.open_append(&a).unwrap();
        f.append(b"hello").unwrap();
        f.sync().unwrap();
        fs.crash();
        assert_eq!(fs.contents(&a), None, "name not synced");
        let mut f = fs.open_append(&a).unwrap();
        f.append(b"hello").unwrap();
        f.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        f.append(b" world").unwrap();
        fs.crash();
        let got = fs.contents(&a).unwrap();
        assert!(
            got.starts_with(b"hello") && got.len() <= 5 + 6 + 7,
            "{got:?}"
        );
        fs.cut_after(1);
        fs.write_synced(&dir.join("x"), b"1").unwrap();
        assert!(fs.rename(&dir.join("x"), &a).is_err());
        assert!(fs.is_dead());
        assert!(fs.list(dir).is_err());
    }
}
