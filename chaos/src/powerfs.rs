//! A FUSE filesystem for power loss: it keeps every file in memory twice, as written and
//! as last synced, and on [`PowerFs::power_loss`] every file goes back to what was synced.
//! A process crash (SIGKILL) loses nothing, as with a kernel's page cache; only a power
//! loss does.
//!
//! One instance is mounted over each node's data directory while the node runs. The model
//! is deliberately simple: data is durable per file at `fsync`/`fdatasync`; directory
//! operations (create, rename, unlink, mkdir) are durable at once, so a file created and
//! never synced survives a power loss empty. Torn writes are not modelled.
//!
//! Two disk faults can be switched on and off while it is mounted ([`DiskFaults`]):
//! failing syncs (`fsync` answers EIO and syncs nothing, as a dying disk or a lost
//! network volume does), and a full disk (`statfs` reports no space left and every write
//! that would grow a file answers ENOSPC).
//!
//! `lying_fsync` plants the defect of NATS 2.12 at the disk: fsync answers at once and
//! syncs nothing; a writeback thread makes everything durable every
//! `WRITEBACK_INTERVAL`, as an OS flushes its page cache. A power loss then loses what
//! was written, and acknowledged, since the last writeback.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};

/// Attributes and entries are not cached by the kernel: sizes change under it.
const TTL: Duration = Duration::ZERO;
/// With `lying_fsync`, how often everything written becomes durable.
pub const WRITEBACK_INTERVAL: Duration = Duration::from_secs(2);
const BLOCK_BYTES: u32 = 4096;
/// A file may not grow past this (the filesystem is in memory).
const FILE_BYTES_MAX: u64 = 1 << 30;

struct Inode {
    kind: FileType,
    perm: u16,
    /// Directory entries (directories only).
    children: BTreeMap<OsString, u64>,
    parent: u64,
    /// The contents as written.
    data: Vec<u8>,
    /// The contents as of the last sync.
    durable: Vec<u8>,
    /// The lowest offset written or truncated to since the last sync (`usize::MAX`: clean).
    dirty_from: usize,
    mtime: SystemTime,
}

impl Inode {
    fn new(kind: FileType, perm: u16, parent: u64) -> Inode {
        Inode {
            kind,
            perm,
            children: BTreeMap::new(),
            parent,
            data: vec![],
            durable: vec![],
            dirty_from: usize::MAX,
            mtime: SystemTime::now(),
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = if self.kind == FileType::Directory { 4096 } else { self.data.len() as u64 };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind: self.kind,
            perm: self.perm,
            nlink: if self.kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: BLOCK_BYTES,
            flags: 0,
        }
    }

    /// Makes what was written durable, copying only what changed since the last sync.
    fn sync(&mut self) {
        if self.dirty_from == usize::MAX {
            return;
        }
        let from = self.dirty_from.min(self.data.len()).min(self.durable.len());
        self.durable.truncate(from);
        self.durable.extend_from_slice(&self.data[from..]);
        self.dirty_from = usize::MAX;
    }

    fn dirty(&mut self, from: usize) {
        self.dirty_from = self.dirty_from.min(from);
    }
}

struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
}

/// The faults the runner switches on and off while the filesystem is mounted.
#[derive(Debug, Default)]
pub struct DiskFaults {
    /// `fsync` and `fdatasync` answer EIO and sync nothing.
    pub failing_syncs: AtomicBool,
    /// No space left: `statfs` reports none free, a write that grows a file answers
    /// ENOSPC.
    pub full: AtomicBool,
}

impl DiskFaults {
    fn failing_syncs(&self) -> bool {
        self.failing_syncs.load(Ordering::Relaxed)
    }

    fn full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Every fault off.
    pub fn clear(&self) {
        self.failing_syncs.store(false, Ordering::Relaxed);
        self.full.store(false, Ordering::Relaxed);
    }
}

/// One mounted instance's state, shared with the runner.
#[derive(Clone)]
pub struct PowerFs {
    state: Arc<Mutex<State>>,
    lying_fsync: bool,
    faults: Arc<DiskFaults>,
}

const ROOT: u64 = 1;

impl PowerFs {
    pub fn new(lying_fsync: bool) -> PowerFs {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(FileType::Directory, 0o755, ROOT));
        let fs = PowerFs {
            state: Arc::new(Mutex::new(State { inodes, next_ino: ROOT + 1 })),
            lying_fsync,
            faults: Arc::new(DiskFaults::default()),
        };
        if lying_fsync {
            // Ends once the filesystem is gone.
            let state = Arc::downgrade(&fs.state);
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(WRITEBACK_INTERVAL);
                    let Some(state) = state.upgrade() else { break };
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.inodes.values_mut().for_each(Inode::sync);
                }
            });
        }
        fs
    }

    /// The switches of this filesystem's faults.
    pub fn faults(&self) -> &DiskFaults {
        &self.faults
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every file goes back to its contents at its last sync. Call it while nothing has
    /// the filesystem's files open (the node killed). Returns the bytes lost.
    pub fn power_loss(&self) -> u64 {
        let mut lost = 0;
        for inode in self.state().inodes.values_mut() {
            if inode.dirty_from != usize::MAX {
                lost += (inode.data.len().max(inode.durable.len()) - inode.dirty_from.min(inode.data.len())) as u64;
                inode.data = inode.durable.clone();
                inode.dirty_from = usize::MAX;
            }
        }
        lost
    }

    /// Mounts this filesystem on `at`; unmounted when the session is dropped.
    pub fn mount(&self, at: &Path) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options =
            vec![fuser::MountOption::FSName("flotilla-powerfs".to_string()), fuser::MountOption::DefaultPermissions];
        fuser::spawn_mount(self.clone(), at, &config)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<u64, Errno> {
        let s = self.state();
        let dir = s.inodes.get(&parent.0).ok_or(Errno::ENOENT)?;
        dir.children.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn make(&self, parent: INodeNo, name: &OsStr, kind: FileType, mode: u32) -> Result<(u64, FileAttr), Errno> {
        let mut s = self.state();
        let dir = s.inodes.get(&parent.0).ok_or(Errno::ENOENT)?;
        if dir.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if dir.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = s.next_ino;
        s.next_ino += 1;
        let inode = Inode::new(kind, (mode & 0o7777) as u16, parent.0);
        let attr = inode.attr(ino);
        s.inodes.insert(ino, inode);
        s.inodes.get_mut(&parent.0).expect("the parent").children.insert(name.to_os_string(), ino);
        Ok((ino, attr))
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut s = self.state();
        let ino = *s.inodes.get(&parent.0).ok_or(Errno::ENOENT)?.children.get(name).ok_or(Errno::ENOENT)?;
        let inode = s.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (dir, inode.kind == FileType::Directory) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !inode.children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        s.inodes.get_mut(&parent.0).expect("the parent").children.remove(name);
        // A file may still be open: its inode stays until the filesystem goes.
        if dir {
            s.inodes.remove(&ino);
        }
        Ok(())
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(ino) => {
                let attr = self.state().inodes[&ino].attr(ino);
                reply.entry(&TTL, &attr, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().inodes.get(&ino.0) {
            Some(i) => reply.attr(&TTL, &i.attr(ino.0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let Some(i) = s.inodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        if let Some(m) = mode {
            i.perm = (m & 0o7777) as u16;
        }
        if let Some(size) = size {
            if size > FILE_BYTES_MAX {
                return reply.error(Errno::EFBIG);
            }
            if self.faults.full() && size as usize > i.data.len() {
                return reply.error(Errno::ENOSPC);
            }
            i.data.resize(size as usize, 0);
            i.dirty(size as usize);
            i.mtime = SystemTime::now();
        }
        reply.attr(&TTL, &i.attr(ino.0));
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        match self.make(parent, name, FileType::Directory, mode) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let Some(ino) = s.inodes.get(&parent.0).and_then(|d| d.children.get(name)).copied() else {
            return reply.error(Errno::ENOENT);
        };
        let Some(target_dir) = s.inodes.get(&newparent.0) else { return reply.error(Errno::ENOENT) };
        if let Some(old) = target_dir.children.get(newname).copied()
            && s.inodes.get(&old).is_some_and(|i| i.kind == FileType::Directory && !i.children.is_empty())
        {
            return reply.error(Errno::ENOTEMPTY);
        }
        s.inodes.get_mut(&parent.0).expect("the parent").children.remove(name);
        s.inodes.get_mut(&newparent.0).expect("the new parent").children.insert(newname.to_os_string(), ino);
        if let Some(i) = s.inodes.get_mut(&ino) {
            i.parent = newparent.0;
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        let Some(i) = s.inodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        if flags.0 & libc::O_TRUNC != 0 {
            i.data.clear();
            i.dirty(0);
        }
        // No page cache: after a power loss the kernel must not serve what was lost.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(parent, name, FileType::RegularFile, mode) {
            Ok((_, attr)) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        let Some(i) = s.inodes.get(&ino.0) else { return reply.error(Errno::ENOENT) };
        let start = (offset as usize).min(i.data.len());
        let end = (start + size as usize).min(i.data.len());
        reply.data(&i.data[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let Some(i) = s.inodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        let end = offset + data.len() as u64;
        if end > FILE_BYTES_MAX {
            return reply.error(Errno::EFBIG);
        }
        let (offset, end) = (offset as usize, end as usize);
        if self.faults.full() && end > i.data.len() {
            return reply.error(Errno::ENOSPC);
        }
        if i.data.len() < end {
            i.data.resize(end, 0);
        }
        i.data[offset..end].copy_from_slice(data);
        i.dirty(offset);
        i.mtime = SystemTime::now();
        reply.written(data.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.faults.failing_syncs() {
            return reply.error(Errno::EIO);
        }
        if !self.lying_fsync
            && let Some(i) = self.state().inodes.get_mut(&ino.0)
        {
            i.sync();
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let s = self.state();
        let Some(dir) = s.inodes.get(&ino.0) else { return reply.error(Errno::ENOENT) };
        let mut entries: Vec<(u64, FileType, OsString)> =
            vec![(ino.0, FileType::Directory, ".".into()), (dir.parent, FileType::Directory, "..".into())];
        for (name, child) in &dir.children {
            let kind = s.inodes.get(child).map_or(FileType::RegularFile, |i| i.kind);
            entries.push((*child, kind, name.clone()));
        }
        for (n, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), n as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let Some(i) = s.inodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        // FALLOC_FL_KEEP_SIZE only reserves space: nothing to do in memory.
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            let end = offset + length;
            if end > FILE_BYTES_MAX {
                return reply.error(Errno::EFBIG);
            }
            if (i.data.len() as u64) < end {
                if self.faults.full() {
                    return reply.error(Errno::ENOSPC);
                }
                let from = i.data.len();
                i.data.resize(end as usize, 0);
                i.dirty(from);
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        // 64 GiB in 4 KiB blocks, all free unless full: RocksDB checks for space before
        // it writes, and the node refuses produce below `disk-free-min-bytes`.
        let blocks = (64u64 << 30) / u64::from(BLOCK_BYTES);
        let free = if self.faults.full() { 0 } else { blocks };
        reply.statfs(blocks, free, free, 1 << 20, 1 << 20, BLOCK_BYTES, 255, BLOCK_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Mounting needs root and /dev/fuse; elsewhere the test says so and passes.
    fn mounted(lying: bool) -> Option<(PowerFs, fuser::BackgroundSession, std::path::PathBuf)> {
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
            eprintln!("skipped: mounting a FUSE filesystem needs root and /dev/fuse");
            return None;
        }
        let at = std::env::temp_dir().join(format!("powerfs-test-{}-{lying}", std::process::id()));
        std::fs::create_dir_all(&at).unwrap();
        let fs = PowerFs::new(lying);
        let session = fs.mount(&at).expect("mount");
        Some((fs, session, at))
    }

    #[test]
    fn a_power_loss_keeps_what_was_synced_and_drops_the_rest() {
        let Some((fs, session, at)) = mounted(false) else { return };
        std::fs::create_dir(at.join("db")).unwrap();
        let path = at.join("db/wal.log");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"synced;").unwrap();
        f.sync_data().unwrap();
        f.write_all(b"not synced").unwrap();
        std::fs::write(at.join("never-synced"), b"x").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"synced;not synced", "a crash of the writer loses nothing");
        assert_eq!(fs.power_loss(), 11);
        assert_eq!(std::fs::read(&path).unwrap(), b"synced;");
        assert_eq!(std::fs::read(at.join("never-synced")).unwrap(), b"", "created, never synced: empty");
        std::fs::rename(&path, at.join("db/renamed")).unwrap();
        let names: Vec<String> =
            std::fs::read_dir(at.join("db")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, vec!["renamed"]);
        drop(session);
        std::fs::remove_dir_all(&at).unwrap();
    }

    #[test]
    fn a_lying_fsync_syncs_nothing_until_writeback() {
        let Some((fs, session, at)) = mounted(true) else { return };
        let path = at.join("wal.log");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"acknowledged").unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs.power_loss();
        assert_eq!(std::fs::read(&path).unwrap(), b"", "fsync lied");
        std::fs::write(&path, b"later").unwrap();
        std::thread::sleep(WRITEBACK_INTERVAL * 2);
        fs.power_loss();
        assert_eq!(std::fs::read(&path).unwrap(), b"later", "the writeback made it durable");
        drop(session);
        std::fs::remove_dir_all(&at).unwrap();
    }

    #[test]
    fn failing_syncs_and_a_full_disk_answer_errors_until_cleared() {
        let Some((fs, session, at)) = mounted(false) else { return };
        let path = at.join("sst");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"before").unwrap();
        fs.faults().failing_syncs.store(true, Ordering::Relaxed);
        let e = f.sync_all().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        fs.faults().clear();
        f.sync_all().unwrap();
        fs.faults().full.store(true, Ordering::Relaxed);
        let e = f.write_all(b"more").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(at.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        assert_eq!(st.f_bavail, 0, "a full disk reports no space");
        fs.faults().clear();
        f.write_all(b"more").unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs.power_loss();
        assert_eq!(std::fs::read(&path).unwrap(), b"beforemore");
        drop(session);
        std::fs::remove_dir_all(&at).unwrap();
    }
}
