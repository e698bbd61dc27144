//! Child processes of tests and benchmarks: output in a log file, stopped by
//! PID on drop (never by name), and waits that fail loudly, with the log,
//! when the child exits.
//!
//! Readiness of a latchkey server is taken from its own log: a free port is
//! picked before the child binds it (ports.rs keeps the OS from handing it
//! to an outgoing connection, but a process binding by number may still
//! take it in between), and then a connect or a `/readyz` on that port
//! would reach the other process. latchkey logs `auth server listening`
//! with `addr=…` only after its bind succeeded;
//! [`LoggedChild::wait_serving`] waits for that line (the child still
//! alive) before it polls `/readyz`.
//!
//! std only: benches/auth includes this file with `#[path]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many lines of a child's log a failed test prints.
const LOG_TAIL_ON_FAILURE: usize = 60;

/// How a [`LoggedChild`] is stopped on drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL at once (latchkey: nothing to tidy up).
    Kill,
    /// SIGTERM, then SIGKILL after 5 s (nginx: its master stops its workers).
    Term,
}

/// A child process with stdout and stderr in a log file, stopped by PID on drop.
pub struct LoggedChild {
    name: String,
    child: Child,
    log: PathBuf,
    stop: Stop,
}

impl LoggedChild {
    /// Spawns `cmd` (stdin closed, stdout and stderr to `log`).
    pub fn spawn(name: &str, log: PathBuf, cmd: &mut Command, stop: Stop) -> Self {
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
            stop,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the child has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_text());
        }
    }

    /// Waits until something accepts connections on 127.0.0.1:`port` (for
    /// processes whose log is not read: the proxies, the echo upstream).
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} is not listening on {port}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log has a line with `message` and the field
    /// `addr=<addr>` (plain or JSON logs), the child still running.
    pub fn wait_logged(&mut self, message: &str, addr: &str, deadline: Instant) {
        while !logged_with_addr(&self.log_text(), message, addr) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} did not log {message:?} with addr={addr}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until this latchkey has bound `addr` (its `auth server
    /// listening` line) and then until `GET /readyz` there answers 200.
    pub fn wait_serving(&mut self, addr: &str, timeout: Duration) {
        self.wait_serving_with(addr, timeout, http_get_ok);
    }

    /// [`wait_serving`](Self::wait_serving) for a server on HTTPS
    /// (`--http-tls`): `/readyz` through curl (readiness only: the tests
    /// that check the certificate verify it themselves).
    pub fn wait_serving_https(&mut self, addr: &str, timeout: Duration) {
        self.wait_serving_with(addr, timeout, https_get_ok);
    }

    fn wait_serving_with(&mut self, addr: &str, timeout: Duration, ready: fn(&str, &str) -> bool) {
        let deadline = Instant::now() + timeout;
        self.wait_logged("auth server listening", addr, deadline);
        while !ready(addr, "/readyz") {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} on {addr} was not ready within {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, by PID; the exit status, which must come `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.send_term();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {within:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn send_term(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test shows what its children said last (the harness
            // prints a failed test's output; the log files go with the runner).
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
            eprintln!(
                "--- last {} lines of {} ({}):\n{}\n---",
                tail.len(),
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        if self.stop == Stop::Term {
            self.send_term();
            for _ in 0..50 {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.kill();
    }
}

/// Whether a line of `log` carries `message` and the field `addr` =
/// `addr` exactly (`addr=127.0.0.1:80` is not `addr=127.0.0.1:8080`).
fn logged_with_addr(log: &str, message: &str, addr: &str) -> bool {
    let plain = format!("addr={addr}");
    let json = format!("\"addr\":\"{addr}\"");
    log.lines().map(without_ansi).any(|line| {
        line.contains(message) && (line.split_whitespace().any(|word| word == plain) || line.contains(&json))
    })
}

/// `line` without ANSI colour sequences (`ESC [ … letter`).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `GET https://<addr><path>` answers 200 within 2 s, the
/// certificate not checked (curl -k).
pub fn https_get_ok(addr: &str, path: &str) -> bool {
    Command::new("curl")
        .args(["-sk", "--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{addr}{path}"))
        .output()
        .is_ok_and(|o| o.stdout == b"200")
}

/// Whether `GET http://<addr><path>` answers 200 within 2 s (a blocking
/// poll, usable before any async runtime is involved).
pub fn http_get_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

#[test]
fn the_listening_line_is_found_by_its_exact_address() {
    let plain = "2026-01-01T00:00:00Z  INFO latchkey::server: auth server listening \
                 \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:8080 \u{1b}[3mmax_connections\u{1b}[0m=10";
    assert!(logged_with_addr(plain, "auth server listening", "127.0.0.1:8080"));
    assert!(!logged_with_addr(plain, "auth server listening", "127.0.0.1:80"));
    assert!(!logged_with_addr(
        plain,
        "admission webhook listening",
        "127.0.0.1:8080"
    ));
    let json = r#"{"fields":{"message":"auth server listening","addr":"127.0.0.1:9"}}"#;
    assert!(logged_with_addr(json, "auth server listening", "127.0.0.1:9"));
    assert!(!logged_with_addr(json, "auth server listening", "127.0.0.1:99"));
}
