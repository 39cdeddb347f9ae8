//! Terminals: with `process.terminal`, the init creates a pty in the container's own devpts,
//! makes its slave the command's controlling terminal and stdio, and sends the master to the
//! console socket (SCM_RIGHTS, as runc does), where the caller owns it.
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::Error;

/// Where the master goes.
#[derive(Debug, Clone)]
pub enum ConsoleSocket {
    /// A unix socket path to connect to (the OCI `--console-socket`).
    Path(PathBuf),
    /// An already connected unix socket (the shim's socketpair).
    Fd(RawFd),
}

fn fail(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Process(format!("{what}: {}", super::describe(e)))
}

/// Connects to the console socket; done before pivot_root, while its path is reachable.
pub fn connect(target: &ConsoleSocket) -> Result<OwnedFd, Error> {
    match target {
        ConsoleSocket::Path(p) => UnixStream::connect(p)
            .map(OwnedFd::from)
            .map_err(|e| fail(&format!("connecting to the console socket {}", p.display()), e)),
        ConsoleSocket::Fd(fd) => nix::unistd::dup(crate::sys::borrow_fd(*fd)).map_err(|e| fail("console socket", e)),
    }
}

/// Creates the pty, sends its master over `socket`, and makes the slave the calling process'
/// controlling terminal and stdin/stdout/stderr.
pub fn setup(socket: OwnedFd, size: Option<(u16, u16)>, uid: u32, gid: u32) -> Result<(), Error> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| fail("opening /dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| fail("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| fail("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| fail("ptsname", e))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(&format!("opening {name}"), e))?;
    nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(|e| fail(&format!("chown {name}"), e))?;
    if let Some((rows, cols)) = size {
        crate::sys::set_window_size(slave.as_raw_fd(), rows, cols).map_err(|e| fail("setting the window size", e))?;
    }
    let fds = [master.as_raw_fd()];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .map_err(|e| fail("sending the terminal to the console socket", e))?;
    drop(master);
    drop(socket);
    crate::sys::set_controlling_terminal(slave.as_raw_fd()).map_err(|e| fail("setting the controlling terminal", e))?;
    let fd = slave.as_raw_fd();
    crate::sys::set_stdio([fd, fd, fd]).map_err(|e| fail("terminal stdio", e))?;
    Ok(())
}

/// Receives a terminal master sent by [`setup`] (for the shim and `husk-runtime run`).
pub fn receive(socket: &UnixStream) -> Result<OwnedFd, Error> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::IoSliceMut;
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| fail("receiving the terminal", e))?;
    for cmsg in msg.cmsgs().map_err(|e| fail("receiving the terminal", e))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                return Ok(crate::sys::own_fd(*fd));
            }
        }
    }
    Err(Error::Process("the container sent no terminal".into()))
}
