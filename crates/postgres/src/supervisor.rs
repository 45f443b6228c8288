//! The supervisor: a small process of its own between the agent and the postmaster. It starts
//! the postmaster as its child and kills it (SIGKILL, with every process the postmaster
//! started) when
//! - the deadline the agent last sent passes: the agent stopped proving, in time, that it
//!   still holds the leader lease (frozen by SIGSTOP or a VM pause, wedged, starved); the
//!   agent sets the deadline before the lease could expire for the other nodes;
//! - the agent goes away (its end of the control pipe closes).
//!
//! Deadlines are on CLOCK_BOOTTIME, which keeps counting while the machine is suspended: a
//! pause of the whole machine is counted when it ends, before the supervisor does anything
//! else. The supervisor is the same executable as the agent (`pgha-agent __pgha-supervise`),
//! so nothing extra is installed; it needs no privileges beyond signalling its own children.
//!
//! Protocol on its stdin, one line per message: `deadline <nanoseconds since boot>` or
//! `deadline none`.

use std::ffi::OsString;
use std::io::BufRead;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The first argument that makes a binary run as the supervisor.
pub const SUPERVISE_ARG: &str = "__pgha-supervise";

/// How often the supervisor looks at its clock and its child.
const POLL: Duration = Duration::from_millis(10);

/// Time since boot, counting suspend (CLOCK_BOOTTIME).
pub fn boottime() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32),
        // Linux always has it; were it missing, the monotonic clock is the next best.
        Err(_) => match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
            Ok(t) => Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32),
            Err(_) => Duration::ZERO,
        },
    }
}

/// One control message.
pub fn deadline_line(deadline: Option<Duration>) -> String {
    match deadline {
        Some(d) => format!("deadline {}\n", d.as_nanos()),
        None => "deadline none\n".into(),
    }
}

fn parse_deadline(v: &str) -> Option<Option<Duration>> {
    match v.trim() {
        "none" => Some(None),
        n => n
            .parse::<u64>()
            .ok()
            .map(|ns| Some(Duration::from_nanos(ns))),
    }
}

#[derive(Debug, Default)]
struct Control {
    deadline: Option<Duration>,
    closed: bool,
}

/// `pgha-agent __pgha-supervise --deadline <ns|none> -- <program> <args>...`: the
/// supervisor's main. Returns the postmaster's exit code, or 3 after a deadline kill.
pub fn supervise_main(args: &[OsString]) -> ExitCode {
    let mut it = args.iter();
    let mut deadline = None;
    let mut cmd: Vec<OsString> = Vec::new();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--deadline") => {
                let v = it.next().and_then(|v| v.to_str()).and_then(parse_deadline);
                match v {
                    Some(d) => deadline = d,
                    None => {
                        eprintln!("pgha supervisor: --deadline needs nanoseconds or `none`");
                        return ExitCode::from(2);
                    }
                }
            }
            Some("--") => {
                cmd = it.cloned().collect();
                break;
            }
            _ => {
                eprintln!("pgha supervisor: unexpected argument {a:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some((program, rest)) = cmd.split_first() else {
        eprintln!("pgha supervisor: no command after --");
        return ExitCode::from(2);
    };
    // Die with the agent (the spawning thread lives as long as its process).
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        eprintln!("pgha supervisor: parent-death signal: {e}");
    }
    let mut child = match Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgha supervisor: start {program:?}: {e}");
            return ExitCode::from(1);
        }
    };
    let pid = child.id() as i32;
    let control = Arc::new(Mutex::new(Control {
        deadline,
        closed: false,
    }));
    {
        let control = control.clone();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                let parsed = line.strip_prefix("deadline ").and_then(parse_deadline);
                match (parsed, control.lock()) {
                    (Some(d), Ok(mut c)) => c.deadline = d,
                    (None, _) => eprintln!("pgha supervisor: ignored control line {line:?}"),
                    (_, Err(_)) => break,
                }
            }
            if let Ok(mut c) = control.lock() {
                c.closed = true;
            }
        });
    }
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8),
            Ok(None) => {}
            Err(e) => eprintln!("pgha supervisor: wait: {e}"),
        }
        let (deadline, closed) = match control.lock() {
            Ok(c) => (c.deadline, c.closed),
            Err(_) => (None, true),
        };
        let now = boottime();
        if closed {
            eprintln!("pgha supervisor: the agent is gone: PostgreSQL killed");
            kill_tree(pid);
            let _ = child.wait();
            return ExitCode::SUCCESS;
        }
        if let Some(d) = deadline.filter(|d| now >= *d) {
            eprintln!(
                "pgha supervisor: the agent did not renew its deadline (passed {} ms ago): PostgreSQL killed",
                (now - d).as_millis()
            );
            kill_tree(pid);
            let _ = child.wait();
            return ExitCode::from(3);
        }
        std::thread::sleep(POLL);
    }
}

/// SIGKILL of `pid` and of every process whose parent it is (a postmaster's backends would
/// otherwise finish the command they are running, a commit included, before noticing).
pub fn kill_tree(pid: i32) {
    if let Err((p, e)) = sigkill_tree(pid) {
        eprintln!("pgha supervisor: SIGKILL {p}: {e}");
    }
}

/// SIGKILL to `pid` and its children (a process already gone is no error); the first pid
/// that could not be signalled, and why.
pub(crate) fn sigkill_tree(pid: i32) -> std::result::Result<(), (i32, nix::errno::Errno)> {
    let mut victims = vec![pid];
    victims.extend(crate::instance::children_of(pid));
    let mut first_err = None;
    for p in victims {
        if let Err(e) = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            if e != nix::errno::Errno::ESRCH && first_err.is_none() {
                first_err = Some((p, e));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_trip_through_the_control_line() {
        let d = Duration::from_nanos(123_456_789_000);
        let line = deadline_line(Some(d));
        assert_eq!(
            line.trim()
                .strip_prefix("deadline ")
                .and_then(parse_deadline),
            Some(Some(d))
        );
        assert_eq!(parse_deadline("none"), Some(None));
        assert_eq!(parse_deadline("soon"), None);
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime();
        std::thread::sleep(Duration::from_millis(5));
        assert!(boottime() > a);
    }
}
