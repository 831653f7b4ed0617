//! What the `faustus` CLI tests share.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `cmd` to its end, `stdin` written to its standard input (none: an
/// empty one), and returns what it printed and its status.
pub(crate) fn run_with(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faustus runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("stdin written");
    }
    child.wait_with_output().expect("faustus exits")
}

/// The standard output of a run that must succeed (else its stderr fails
/// the test).
pub(crate) fn stdout_of(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "faustus {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}
