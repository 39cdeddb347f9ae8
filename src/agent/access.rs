//! Who may call what on the API socket.
//!
//! The socket's mode and group decide who can connect. With an admin group configured
//! (`--admin-group`), the kernel's account of each connection's peer (`SO_PEERCRED` for its
//! uid and gid, `SO_PEERGROUPS` for its supplementary groups, both fixed at `connect`) also
//! decides what it may call: root and members of the admin group may call everything; anyone
//! else who can connect may only call the RPCs that read ([`READ_ONLY`]). Any RPC not listed
//! there, including ones added later, needs the admin group.
//!
//! TCP connections are not checked here: mutual TLS admits only certificates of the configured
//! CA, and they may call everything.
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::http;

use super::authority::AuthorityFix;

/// The RPCs that change nothing: status, listings, waits, usage, events, logs and versions.
pub const READ_ONLY: &[&str] = &[
    "/husk.agent.v1.Containerizer/Wait",
    "/husk.agent.v1.Containerizer/Usage",
    "/husk.agent.v1.Containerizer/Status",
    "/husk.agent.v1.Containerizer/List",
    "/husk.agent.v1.Containerizer/Watch",
    "/husk.agent.v1.Containerizer/Logs",
    "/husk.agent.v1.Containerizer/Version",
    "/husk.agent.v1.Containerizer/Info",
    "/husk.agent.v1.Containerizer/ListImages",
];

/// The peer of a unix connection, as the kernel recorded it at `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    pub fn of(stream: &impl AsFd) -> io::Result<Peer> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let cred = getsockopt(stream, PeerCredentials)?;
        let groups = husk_shim::peer_groups(stream.as_fd())?;
        Ok(Peer { pid: cred.pid(), uid: cred.uid(), gid: cred.gid(), groups })
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Whether `peer` may call `path` when `admin_gid` is the admin group: the reason when not.
pub fn check(path: &str, peer: Option<&Peer>, admin_gid: u32, admin_name: &str) -> Result<(), String> {
    if READ_ONLY.contains(&path) {
        return Ok(());
    }
    match peer {
        Some(p) if p.uid == 0 || p.in_group(admin_gid) => Ok(()),
        Some(p) => Err(format!(
            "{path} changes state: uid {} (pid {}) is neither root nor in the admin group `{admin_name}` \
             (gid {admin_gid}); callers outside it may only read",
            p.uid, p.pid
        )),
        None => Err(format!("{path} changes state and the caller's credentials are unknown")),
    }
}

/// A unix connection that carries its [`Peer`] into every request's extensions, its requests
/// read through [`AuthorityFix`] (clients that send the socket path as `:authority`).
pub struct PeerStream {
    stream: UnixStream,
    peer: Peer,
    fix: Box<AuthorityFix>,
    eof: bool,
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let ready = this.fix.output();
            if !ready.is_empty() {
                let n = buf.remaining().min(ready.len());
                buf.put_slice(&ready[..n]);
                bytes::Buf::advance(ready, n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.fix.finish();
                this.eof = true;
            } else {
                this.fix.feed(read.filled());
            }
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The listener's connections with their peers. A connection whose credentials cannot be read
/// is dropped (and logged) rather than served unchecked.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<PeerStream>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).filter_map(|conn| match conn {
        Err(e) => Some(Err(e)),
        Ok(stream) => match Peer::of(&stream) {
            Ok(peer) => Some(Ok(PeerStream { stream, peer, fix: Box::default(), eof: false })),
            Err(e) => {
                tracing::warn!(error = %e, "dropping an API connection whose peer credentials are unreadable");
                None
            }
        },
    })
}

/// The tower layer that refuses state-changing RPCs to callers outside the admin group.
#[derive(Clone)]
pub struct AdminOnly {
    /// `(gid, name)` of the admin group; `None` lets every caller through.
    pub group: Option<(u32, String)>,
}

impl<S> tower::Layer<S> for AdminOnly {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner, group: self.group.clone() }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    group: Option<(u32, String)>,
}

type Reply<E> = Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Reply<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some((gid, name)) = &self.group {
            let peer = req.extensions().get::<Peer>();
            if let Err(why) = check(req.uri().path(), peer, *gid, name) {
                tracing::warn!(
                    rpc = req.uri().path(),
                    uid = peer.map(|p| p.uid),
                    pid = peer.map(|p| p.pid),
                    "refused: {why}"
                );
                let reply = tonic::Status::permission_denied(why).into_http();
                return Box::pin(async move { Ok(reply) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_for_all_the_rest_for_root_and_the_group() {
        let user = Peer { pid: 7, uid: 1000, gid: 1000, groups: vec![27] };
        let admin = Peer { groups: vec![27, 4242], ..user.clone() };
        let root = Peer { uid: 0, gid: 0, groups: vec![], pid: 1 };
        let launch = "/husk.agent.v1.Containerizer/Launch";
        for read in READ_ONLY {
            assert_eq!(check(read, Some(&user), 4242, "husk-admin"), Ok(()));
        }
        assert_eq!(
            check(launch, Some(&user), 4242, "husk-admin").unwrap_err(),
            "/husk.agent.v1.Containerizer/Launch changes state: uid 1000 (pid 7) is neither root nor in the admin \
             group `husk-admin` (gid 4242); callers outside it may only read"
        );
        assert_eq!(check(launch, Some(&admin), 4242, "husk-admin"), Ok(()));
        assert_eq!(check(launch, Some(&Peer { gid: 4242, ..user.clone() }), 4242, "g"), Ok(()));
        assert_eq!(check(launch, Some(&root), 4242, "husk-admin"), Ok(()));
        assert!(check(launch, None, 4242, "husk-admin").is_err());
        // Anything not known to read needs the group, also RPCs added later.
        assert!(check("/husk.agent.v1.Containerizer/SomethingNew", Some(&user), 4242, "g").is_err());
    }

    #[test]
    fn peer_credentials_of_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        assert_eq!(peer.pid as u32, std::process::id());
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        assert_eq!(peer.gid, nix::unistd::getgid().as_raw());
        let mut mine: Vec<u32> = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        let mut got = peer.groups.clone();
        mine.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, mine);
    }
}
