//! OCI hooks: each runs with the container's state as JSON on its standard input, under its
//! timeout (default 30 s here; a hook that outlives it is killed).
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use super::Error;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `hooks` in order; the first failure stops the list and is returned with its output.
pub fn run(kind: &str, hooks: Option<&Vec<Hook>>, state_json: &[u8]) -> Result<(), Error> {
    for (i, hook) in hooks.into_iter().flatten().enumerate() {
        let what = format!("{kind} hook {i} ({})", hook.path().display());
        let args = hook.args().clone().unwrap_or_default();
        let mut cmd = Command::new(hook.path());
        if let Some((argv0, rest)) = args.split_first() {
            use std::os::unix::process::CommandExt;
            cmd.arg0(argv0).args(rest);
        }
        cmd.env_clear();
        for kv in hook.env().iter().flatten() {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Process(format!("{what}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its state is not an error.
            let _ = stdin.write_all(state_json);
        }
        let timeout = hook.timeout().map(|t| Duration::from_secs(t.max(1) as u64)).unwrap_or(DEFAULT_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| Error::Process(format!("{what}: {e}")))? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Process(format!("{what}: timed out after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            return Err(Error::Process(format!("{what}: {status}: {}", stderr.trim())));
        }
    }
    Ok(())
}
