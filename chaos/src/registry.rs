//! Everything the runner has started or created and not yet removed: node processes (by
//! PID) and network namespaces (by name). The owners ([`crate::cluster::Cluster`],
//! [`crate::net::Net`]) register what they make and unregister what they remove, so that
//! a signal handler can remove what is left without their help ([`emergency`]), and
//! `flotilla-chaos cleanup` can remove what an earlier run left behind ([`sweep`]).
//!
//! A PID registered here belongs to a child of this process that has not been reaped, so
//! it cannot have been reused by another process: killing it is safe.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The prefix of every network namespace and link the runner creates.
pub const PREFIX: &str = "flch";

#[derive(Default)]
struct Live {
    pids: BTreeSet<i32>,
    netns: Vec<String>,
    mounts: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live { pids: BTreeSet::new(), netns: Vec::new(), mounts: Vec::new() });

/// A run's data directory is `$TMPDIR/<this><runner's pid>`.
pub const DATA_DIR_PREFIX: &str = "flotilla-chaos-";

/// The name the power-loss filesystem is mounted under (`/proc/mounts`).
pub const FS_NAME: &str = "flotilla-powerfs";

fn live() -> std::sync::MutexGuard<'static, Live> {
    // A panic while holding the lock leaves the sets as they were: still usable.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn add_pid(pid: u32) {
    live().pids.insert(pid as i32);
}

pub fn remove_pid(pid: u32) {
    live().pids.remove(&(pid as i32));
}

pub fn add_netns(name: &str) {
    live().netns.push(name.to_string());
}

pub fn remove_netns(name: &str) {
    live().netns.retain(|n| n != name);
}

pub fn add_mount(at: &Path) {
    live().mounts.push(at.to_path_buf());
}

pub fn remove_mount(at: &Path) {
    live().mounts.retain(|m| m != at);
}

/// Detaches a FUSE mount, even one whose server is gone.
pub fn unmount(at: &Path) {
    let _ = Command::new("umount").arg("-l").arg(at).output();
}

/// Kills every registered process and deletes every registered namespace (and with them
/// their veth ends and iptables rules). For the signal handler: the owners' `Drop`s will
/// not run.
pub fn emergency() {
    let (pids, netns, mounts) = {
        let mut l = live();
        (std::mem::take(&mut l.pids), std::mem::take(&mut l.netns), std::mem::take(&mut l.mounts))
    };
    for pid in &pids {
        // SIGKILL also ends a SIGSTOPped process.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    for ns in netns.iter().rev() {
        delete_netns(ns);
    }
    // The nodes are killed but maybe not reaped yet: a lazy unmount detaches anyway.
    for m in &mounts {
        unmount(m);
    }
    eprintln!(
        "cleanup: killed {} node processes, deleted {} network namespaces, unmounted {} filesystems",
        pids.len(),
        netns.len(),
        mounts.len()
    );
}

/// Deletes a network namespace; its veth ends go with it, and their peers too.
pub fn delete_netns(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// What an earlier run left: every namespace and link named with [`PREFIX`]; the
/// processes still running in those namespaces are killed by PID first.
pub fn sweep() -> anyhow::Result<()> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect();
    let mut killed = 0;
    for ns in &names {
        let pids = Command::new("ip").args(["netns", "pids", ns]).output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    for ns in &names {
        delete_netns(ns);
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output()?;
    let mut removed_links = 0;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        // "12: flch1234h@if3: <...>"
        let Some(name) = line.split(": ").nth(1) else { continue };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(PREFIX) {
            let _ = Command::new("ip").args(["link", "del", name]).status();
            removed_links += 1;
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut unmounted = 0;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(FS_NAME), Some(at)) = (fields.next(), fields.next()) {
            unmount(Path::new(at));
            unmounted += 1;
        }
    }
    // Data directories of runs whose runner is gone (named after the runner's PID).
    let mut dirs = 0;
    for entry in std::fs::read_dir(std::env::temp_dir())?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(DATA_DIR_PREFIX)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
            dirs += 1;
        }
    }
    println!("cleanup: removed {dirs} data directories of runs that are gone");
    println!(
        "cleanup: killed {killed} processes in {} namespaces named {PREFIX}*, deleted the namespaces and {removed_links} links, unmounted {unmounted} {FS_NAME} filesystems",
        names.len()
    );
    Ok(())
}
