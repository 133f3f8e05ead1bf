//! Starting the real `components` binary: `serve` on a data directory (and killing it), and
//! one-shot client commands.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_components"))
}

/// Partitions of every data directory the tests serve.
pub const PARTITIONS: u32 = 4;

/// Spawns `components serve` without waiting for it to listen (it may still be recovering).
pub fn spawn_serve(data: &Path, listen: &str, token: Option<&str>, stderr: Stdio) -> Child {
    let mut command = bin();
    command
        .args(["serve", "--listen", listen, "--data"])
        .arg(data)
        .args(["--partitions", &PARTITIONS.to_string()])
        .env_remove("LOCKSTEP_TOKEN")
        .stdout(Stdio::piped())
        .stderr(stderr);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command.spawn().expect("spawn serve")
}

/// A running `components serve`, killed when dropped.
pub struct Served {
    pub child: Child,
    pub address: String,
}

impl Served {
    /// Starts `serve` and waits until it listens.
    pub fn start(data: &Path, listen: &str, token: Option<&str>) -> Self {
        Self::try_start(data, listen, token, Stdio::null())
            .unwrap_or_else(|line| panic!("unexpected first line {line:?}"))
    }

    /// Starts `serve` with its stderr going to `stderr` and waits until it listens; if it
    /// exits first, the first line it printed instead.
    pub fn try_start(
        data: &Path,
        listen: &str,
        token: Option<&str>,
        stderr: Stdio,
    ) -> Result<Self, String> {
        let mut child = spawn_serve(data, listen, token, stderr);
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        match line.trim().strip_prefix("listening on ") {
            Some(address) => Ok(Self {
                address: address.to_string(),
                child,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(line)
            }
        }
    }

    /// SIGKILL, then reap.
    pub fn kill_nine(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` and `stdin`; returns its exit code, stdout and stderr.
pub fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = bin()
        .args(args)
        .env_remove("LOCKSTEP_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
