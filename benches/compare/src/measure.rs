//! Running one contender as a child process and reading what the kernel
//! says it cost: wall time, user + system CPU seconds and peak RSS, from
//! `wait4`'s resource usage of that child alone.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The cost of one child process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Cost {
    /// Seconds from spawn to exit.
    pub wall: f64,
    /// User + system CPU seconds.
    pub cpu: f64,
    /// Peak resident set, MB.
    pub rss_mb: f64,
}

/// A running child whose cost is collected when it exits.
#[derive(Debug)]
pub struct Running {
    pid: i32,
    started: Instant,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    what: String,
    terminated: std::cell::Cell<bool>,
}

/// Starts `cmd` with its output piped (read by threads so it never blocks).
pub fn spawn(mut cmd: Command, what: &str) -> Result<Running, String> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        r.map(|mut r| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        })
    };
    let stdout = reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let pid = child.id() as i32;
    // `child` is not waited through std: wait4 below reaps it.
    std::mem::forget(child);
    Ok(Running {
        pid,
        started,
        stdout,
        stderr,
        what: what.to_owned(),
        terminated: std::cell::Cell::new(false),
    })
}

impl Running {
    /// Seconds since it started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether it has exited (a zombie waiting for `finish`).
    pub fn has_exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| {
                s.rsplit_once(')')
                    .is_none_or(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    /// Asks it to stop as SIGTERM does (a worker commits and leaves).
    pub fn terminate(&self) {
        self.terminated.set(true);
        // SAFETY: sending a signal to a child we started and have not reaped.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }

    /// Waits for it to exit; its stdout, and its cost. A non-zero exit is an
    /// error carrying the end of its stderr.
    pub fn finish(mut self) -> Result<(String, Cost), String> {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
        let wall = self.started.elapsed().as_secs_f64();
        if r < 0 {
            return Err(format!("{}: wait4 failed", self.what));
        }
        let out = self.stdout.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let cost = Cost {
            wall,
            cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
            rss_mb: usage.ru_maxrss as f64 / 1024.0,
        };
        // A JVM stopped by SIGTERM exits 143 (128 + 15) after its hooks ran.
        let exited_ok = libc::WIFEXITED(status)
            && (libc::WEXITSTATUS(status) == 0
                || (self.terminated.get() && libc::WEXITSTATUS(status) == 143));
        if !exited_ok {
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "{} ended with status {status:#x}:\n{}",
                self.what,
                tail.join("\n")
            ));
        }
        Ok((out, cost))
    }
}

/// Runs `cmd` to completion.
pub fn run(cmd: Command, what: &str) -> Result<(String, Cost), String> {
    spawn(cmd, what)?.finish()
}
