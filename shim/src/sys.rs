//! The few system calls husk's runtime needs that have no safe wrapper. Every `unsafe` block of
//! the crate is here.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::Pid;

pub enum Fork {
    Parent(Pid),
    Child,
}

/// fork(2).
///
/// Callers must be single-threaded: the runtime forks from `husk-runtime` (no threads) and from
/// the shim before it starts its async runtime, so the child may run ordinary code.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the callers are single-threaded (see above), so no lock can be held by a thread
    // that does not exist in the child.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Fork::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Fork::Child),
    }
}

/// Ends a forked child without running the parent's exit handlers or flushing its buffers.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Makes the mount at `path` and every mount below it read-only (mount_setattr, Linux 5.12).
pub fn make_tree_readonly(path: &Path) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: `c` is a valid NUL-terminated path and `attr` a valid mount_attr of the size
    // passed; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec, so nothing the runtime or its caller
/// had open leaks into the container's command. Falls back to walking /proc/self/fd where
/// close_range is missing (before Linux 5.11).
pub fn cloexec_from(first: i32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return Ok(());
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD only changes the flags of a descriptor of this process (one that
        // closed meanwhile, like the directory stream's, just fails).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Closes every descriptor from `first` up.
pub fn close_from(first: i32) {
    // SAFETY: closing descriptors of this process; the caller owns none of them any more.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
    if rc != 0 {
        for fd in first..1024 {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

/// Gives the command clean signal state: default dispositions (Rust's runtime ignores SIGPIPE,
/// which exec would pass on) and nothing blocked.
pub fn reset_signals() {
    // The kernel's struct sigaction: glibc refuses its own real-time signals (32, 33) through
    // its wrapper, and an ignored one must not reach the command either.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installs SIG_DFL (no handler code) with a valid struct of the kernel's size.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null::<KernelSigaction>(),
                8usize,
            );
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Loads a seccomp program with seccomp(2) directly: unlike seccompiler's loader it does not
/// set no_new_privs, which the spec may leave off (the caller then holds CAP_SYS_ADMIN).
pub fn load_seccomp(program: &[seccompiler::sock_filter]) -> io::Result<()> {
    // seccompiler's sock_filter is the kernel's struct (repr(C), same fields as libc's).
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let rc =
        unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `fds` the calling process' stdin, stdout and stderr (a descriptor already in its
/// place is left as it is).
pub fn set_stdio(fds: [std::os::fd::RawFd; 3]) -> io::Result<()> {
    for (target, fd) in fds.into_iter().enumerate() {
        if fd != target as i32 {
            // SAFETY: dup2 only changes this process' descriptor table; `target` is 0, 1 or 2.
            if unsafe { libc::dup2(fd, target as i32) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Takes ownership of a descriptor this process was handed by number (the init's status pipe).
pub fn adopt_fd(fd: std::os::fd::RawFd) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller passes a descriptor that is open and owned by nobody else in this
    // process (it was inherited across fork for exactly this use).
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// Makes `fd` (a terminal) the controlling terminal of the calling session leader.
pub fn set_controlling_terminal(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument and only affects this process' session.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a terminal's window size.
pub fn set_window_size(fd: std::os::fd::RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: `ws` is a valid winsize the kernel only reads.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Borrows a descriptor known by number for the duration of a call.
pub fn borrow_fd(fd: std::os::fd::RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers pass descriptors that stay open for as long as the borrow is used (the
    // console socket the caller holds across create).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Takes ownership of a descriptor just received (SCM_RIGHTS).
pub fn own_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel just installed `fd` in this process for us; nothing else owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Registers a descriptor the caller owns with the tokio reactor.
pub fn async_fd(fd: std::os::fd::OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the OwnedFd is moved in, so nothing else can close it or register it while the
    // AsyncFd lives; it is deregistered before it is closed when the AsyncFd drops.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into())
}

/// Moves descriptor `fd` to number `to` (closing what was there), returning `to`.
pub fn move_fd(fd: std::os::fd::RawFd, to: std::os::fd::RawFd) -> io::Result<std::os::fd::RawFd> {
    if fd == to {
        return Ok(to);
    }
    // SAFETY: dup2 and close only change this process' descriptor table.
    unsafe {
        if libc::dup2(fd, to) < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close(fd);
    }
    Ok(to)
}

static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Passes SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to `pid` (the foreground
/// container of `husk-runtime run`), as runc does.
pub fn forward_signals_to(pid: i32) {
    FORWARD_TO.store(pid, std::sync::atomic::Ordering::Relaxed);
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(forward), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2] {
        // SAFETY: the handler only reads an atomic and calls kill, both async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// `SO_PEERGROUPS` (Linux 4.13): the supplementary groups of a unix socket's peer at `connect`.
pub fn peer_groups(socket: std::os::fd::BorrowedFd) -> io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` has room for `len` bytes, and the kernel writes at most that many.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len)
        };
        if rc == 0 {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: `len` now says how much room the list needs.
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if err.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(err);
        }
        groups.resize(needed, 0);
    }
}

/// A pidfd for `pid`: a handle that names that process only, never a later one with its pid.
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(own_fd(fd as i32))
}

/// Sends `sig` (0: only checks that the process lives) to the process of a pidfd.
pub fn pidfd_signal(fd: std::os::fd::BorrowedFd, sig: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a descriptor the caller keeps open, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A mapping of `/proc/self/smaps` whose pages are exactly the file's: readable, not writable,
/// private, file-backed, and without a page of its own (`Anonymous: 0`, none swapped). Dropping
/// such pages from the page tables loses nothing: the next access maps them again from the page
/// cache. The relocated read-only data (RELRO) has private copies and is never one of them.
#[derive(Debug, PartialEq, Eq)]
pub struct CleanMapping {
    pub start: usize,
    pub end: usize,
}

/// The clean file mappings listed in `smaps` (its text).
pub fn clean_file_mappings(smaps: &str) -> Vec<CleanMapping> {
    let mut out = Vec::new();
    // The mapping, whether nothing rules it out, and which of the required zero lines were seen.
    let mut current: Option<(CleanMapping, bool, u8)> = None;
    let finish = |m: Option<(CleanMapping, bool, u8)>, out: &mut Vec<CleanMapping>| {
        if let Some((m, true, 0b111)) = m {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                finish(current.take(), &mut out);
                continue;
            };
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let eligible = perms.len() == 4
                && perms.starts_with('r')
                && &perms[1..2] == "-"
                && perms.ends_with('p')
                && path.starts_with('/');
            finish(current.take(), &mut out);
            current = Some((CleanMapping { start, end }, eligible, 0));
            continue;
        }
        let Some((_, eligible, proven)) = current.as_mut() else { continue };
        let kb = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok());
        // Dirty pages of a private file mapping are the file's own page cache, written lately,
        // until they are copied: only copies (anonymous, swapped, huge) matter. Each of these
        // must be seen, and zero, for the mapping to count.
        let at = ["Anonymous:", "Swap:", "Private_Hugetlb:"].iter().position(|k| *k == first);
        if let Some(i) = at {
            match kb(line) {
                Some(0) => *proven |= 1 << i,
                _ => *eligible = false,
            }
        }
    }
    finish(current.take(), &mut out);
    out
}

/// Drops this process's clean file mappings from its page tables (MADV_DONTNEED): the code and
/// read-only data that starting up touched, and the kernel's fault-around mapped with it. What
/// the process goes on using is mapped back on its next access, from the page cache that every
/// process running the binary shares. Returns the bytes released from the page tables.
pub fn release_clean_file_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
    let mut released = 0;
    for m in clean_file_mappings(&smaps) {
        // SAFETY: the range was, when smaps was read, a whole mapping of this process,
        // read-only and private, whose pages were all the file's (no anonymous, swapped or
        // huge copies): MADV_DONTNEED on it only unmaps pages that the next access maps again
        // with the same contents. Nothing in the shim maps, unmaps or mprotects files after
        // it starts, so the mapping is still that one. No Rust object lives there (it is code
        // and constant data of loaded files).
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += m.end - m.start;
        }
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_untouched_read_only_file_mappings_are_clean() {
        let zero = "Anonymous:             0 kB\nSwap:                  0 kB\nPrivate_Hugetlb:       0 kB\n";
        let smaps = format!(
            "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 123 /usr/bin/husk-shim
Rss:                 100 kB
{zero}Private_Dirty:         0 kB
55d0a0100000-55d0a0300000 r-xp 00100000 fd:01 123 /usr/bin/husk-shim
Shared_Dirty:        512 kB
Private_Dirty:       512 kB
{zero}VmFlags: rd ex mr mw me
55d0a0300000-55d0a0310000 r--p 00300000 fd:01 123 /usr/bin/husk-shim
Anonymous:            64 kB
Swap:                  0 kB
Private_Hugetlb:       0 kB
55d0a0310000-55d0a0311000 rw-p 00310000 fd:01 123 /usr/bin/husk-shim
{zero}55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0 [heap]
Anonymous:           264 kB
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
{zero}7f0000100000-7f0000200000 r-xp 00000000 fd:01 77 /usr/lib/libc.so.6
Anonymous:             0 kB
Swap:                  4 kB
Private_Hugetlb:       0 kB
7ffc00000000-7ffc00002000 r-xp 00000000 00:00 0 [vdso]
{zero}7f0000300000-7f0000400000 r--s 00000000 fd:01 78 /usr/lib/shared
{zero}7f0000500000-7f0000600000 r-xp 00000000 fd:01 79 /usr/lib/libm.so.6
{zero}7f0000700000-7f0000800000 r-xp 00000000 fd:01 80 /usr/lib/a file-with - spaces.so
{zero}7f0000900000-7f0000a00000 r-xp 00000000 fd:01 81 /usr/lib/no-lines.so
Anonymous:             0 kB
7f0000b00000-7f0000c00000 r--p 00000000 fd:01 82 /usr/lib/huge
Anonymous:             0 kB
Swap:                  0 kB
Private_Hugetlb:    2048 kB
"
        );
        assert_eq!(
            clean_file_mappings(&smaps),
            [
                CleanMapping { start: 0x55d0a0000000, end: 0x55d0a0100000 },
                CleanMapping { start: 0x55d0a0100000, end: 0x55d0a0300000 },
                CleanMapping { start: 0x7f0000500000, end: 0x7f0000600000 },
                CleanMapping { start: 0x7f0000700000, end: 0x7f0000800000 },
            ],
            "not RELRO (private copies), not writable, not anonymous, not swapped, not shared, not \
             [vdso], not huge copies, not one whose lines are missing"
        );
    }

    #[test]
    fn releasing_keeps_the_process_working() {
        let before = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        assert!(release_clean_file_pages() > 0, "a test binary has code mappings");
        // Code and constant data come back on use.
        let after = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        assert!(before.contains("Rss:") && after.contains("Rss:"));
        assert_eq!(format!("{:?}", clean_file_mappings("")), "[]");
    }
}
