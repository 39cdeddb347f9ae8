//! The operator's terminal for `huskctl exec -t` and `huskctl attach`: raw mode while a remote
//! terminal is in use, the window size, and stdin read off the async runtime.
use std::io::{IsTerminal, Read};

use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;

/// Puts stdin in raw mode (keys go to the remote terminal as typed, Ctrl-C included) until
/// dropped. Does nothing when stdin is not a terminal.
pub struct RawMode(Option<Termios>);

impl RawMode {
    pub fn enable() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(saved) = termios::tcgetattr(&stdin) else { return RawMode(None) };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        match termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw) {
            Ok(()) => RawMode(Some(saved)),
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// The size (rows, columns) of the terminal on stdout or stdin, if either is one.
pub fn window_size() -> Option<(u32, u32)> {
    use std::os::fd::AsRawFd;
    for fd in [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()] {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into the valid struct it is given.
        #[allow(unsafe_code)]
        let got = unsafe { tiocgwinsz(fd, &mut ws) };
        if got.is_ok() && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row as u32, ws.ws_col as u32));
        }
    }
    None
}

/// Stdin in chunks as it is read (a thread: reads block); the channel closes at EOF.
pub fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Finds docker's detach sequence (Ctrl-P Ctrl-Q) across chunks: returns the bytes to send
/// before it and whether it was seen.
#[derive(Default)]
pub struct DetachKeys {
    pending_ctrl_p: bool,
}

const CTRL_P: u8 = 0x10;
const CTRL_Q: u8 = 0x11;

impl DetachKeys {
    pub fn scan(&mut self, chunk: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(chunk.len() + 1);
        for &b in chunk {
            if self.pending_ctrl_p {
                self.pending_ctrl_p = false;
                if b == CTRL_Q {
                    return (out, true);
                }
                out.push(CTRL_P);
            }
            if b == CTRL_P {
                self.pending_ctrl_p = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_across_chunks() {
        let mut k = DetachKeys::default();
        assert_eq!(k.scan(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(k.scan(&[b'a', CTRL_P]), (b"a".to_vec(), false));
        assert_eq!(k.scan(b"b"), (vec![CTRL_P, b'b'], false));
        assert_eq!(k.scan(&[CTRL_P]), (vec![], false));
        assert_eq!(k.scan(&[CTRL_Q, b'x']), (vec![], true));
        assert_eq!(DetachKeys::default().scan(&[b'z', CTRL_P, CTRL_Q]), (b"z".to_vec(), true));
    }
}
