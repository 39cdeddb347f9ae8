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
/// had open leaks into the container's command.
pub fn cloexec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this process.
    unsafe {
        libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC);
    }
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
