//! The keeper (Linux): a small process between roster and every stdio server, so
//! that no process of a server outlives its stop, or roster.
//!
//! A server runs as the child of a keeper, and the keeper is the child roster
//! spawns. The keeper is a *child subreaper* (`PR_SET_CHILD_SUBREAPER`): whatever
//! the server forks and abandons (a daemon that double-forks and calls `setsid`,
//! the real server behind `sh -c`, `npx` or `uvx`) is re-parented to the keeper,
//! not to init, so the keeper always knows every process of its server: the
//! server and its process group, and its own children. It kills all of them
//! (SIGKILL, round after round, until it has no child left):
//!
//! - when the server exits by itself (then it exits with the server's status,
//!   so roster sees the same exit code or signal);
//! - when roster asks for a kill ([`KILL_ALL`], SIGUSR1);
//! - when roster dies, whatever it dies of: the keeper's parent-death signal is
//!   [`KILL_ALL`].
//!
//! SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to the keeper go to the server's
//! process group, so roster's close sequence (SPEC §6) is unchanged. The server
//! dies with its keeper (its parent-death signal is SIGKILL), should anyone kill
//! the keeper itself.
//!
//! The keeper is not a program of its own: it is the child that `fork` made, and
//! it runs from roster's `pre_exec` hook without ever returning to exec. Code
//! there runs in a copy of a multi-threaded process, so it makes system calls
//! only: no allocation, no locks, no panics, only stack buffers. The server is
//! forked from it with the bare `fork` system call (no `pthread_atfork` handlers) and returns to
//! the normal spawn path, which execs it.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;

use libc::{c_int, pid_t};

/// Sent to a keeper: kill every process of the server now, then exit. It is
/// also the keeper's parent-death signal.
pub(crate) const KILL_ALL: c_int = libc::SIGUSR1;

/// Signals the keeper passes on to the server's process group.
const FORWARDED: [c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// The name the keeper shows in `ps -o comm` and `top`.
const NAME: &[u8] = b"roster-keeper\0";

/// Rounds of killing before the keeper gives up on processes that will not die
/// (stuck in the kernel), about 10 ms each.
const KILL_ROUNDS: usize = 500;

/// Makes `cmd`'s child a keeper that runs the command as its own child.
pub(crate) fn install(cmd: &mut tokio::process::Command) {
    let parent = pid_t::try_from(std::process::id()).unwrap_or(pid_t::MAX);
    // SAFETY: `keep` runs in the child between fork and exec. It makes system
    // calls only (prctl, sigprocmask, getpid, getppid, setpgid, a raw fork,
    // sigwaitinfo, sigtimedwait, waitid, waitpid, kill, open, read, getdents64,
    // close, setrlimit, signal, _exit), on stack buffers; it never allocates,
    // takes a lock or unwinds. The server's side returns to std's exec path.
    unsafe {
        cmd.pre_exec(move || keep(parent));
    }
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// In the forked child: set up the keeper, fork the server. Returns (so that std
/// execs the command) only in the server.
fn keep(parent: pid_t) -> io::Result<()> {
    // SAFETY: system calls on valid arguments; see `install`.
    unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_PDEATHSIG, KILL_ALL as libc::c_ulong, 0, 0, 0) != 0
        {
            return Err(last_error());
        }
        // roster died before the parent-death signal was armed.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        let waited = waited_signals();
        let mut before = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        if libc::sigprocmask(libc::SIG_BLOCK, &waited, &mut before) != 0 {
            return Err(last_error());
        }
        let keeper = libc::getpid();
        match raw_fork() {
            pid if pid < 0 => {
                let e = last_error();
                libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
                Err(e)
            }
            0 => {
                // The server: the mask it was spawned with, a group of its own
                // (the keeper kills it without killing itself), dead with the keeper.
                libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
                if libc::setpgid(0, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(last_error());
                }
                if libc::getppid() != keeper {
                    libc::_exit(1);
                }
                Ok(())
            }
            server => {
                libc::prctl(libc::PR_SET_NAME, NAME.as_ptr() as libc::c_ulong, 0, 0, 0);
                watch(keeper, server, &waited)
            }
        }
    }
}

/// `fork` as the bare system call: glibc's `fork` would run `pthread_atfork`
/// handlers, which may take locks other threads of roster held when the keeper
/// was forked.
///
/// # Safety
/// As `fork`: the child may only make system calls until it execs.
unsafe fn raw_fork() -> pid_t {
    // SAFETY: the system call itself; the caller upholds the post-fork rules.
    let r = unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            libc::syscall(libc::SYS_fork)
        }
        // clone(flags = SIGCHLD, no new stack): a plain fork. s390 takes the stack first.
        #[cfg(target_arch = "s390x")]
        {
            libc::syscall(libc::SYS_clone, 0 as libc::c_ulong, libc::SIGCHLD as libc::c_ulong, 0, 0, 0)
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "s390x")))]
        {
            libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0 as libc::c_ulong, 0, 0, 0)
        }
    };
    pid_t::try_from(r).unwrap_or(-1)
}

/// SIGCHLD, the forwarded signals and [`KILL_ALL`].
fn waited_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialize and fill a set on the stack.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED.into_iter().chain([libc::SIGCHLD, KILL_ALL]) {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// The keeper's life: wait for signals until the server is gone, then follow it.
fn watch(keeper: pid_t, server: pid_t, waited: &libc::sigset_t) -> ! {
    close_every_fd();
    loop {
        // SAFETY: the set is valid; no siginfo is asked for.
        let sig = unsafe { libc::sigwaitinfo(waited, std::ptr::null_mut()) };
        match sig {
            libc::SIGCHLD => {
                reap_orphans(keeper, server);
                if has_exited(server) {
                    let status = kill_tree(keeper, server);
                    exit_like(status);
                }
            }
            s if s == KILL_ALL => {
                let status = kill_tree(keeper, server);
                exit_like(status);
            }
            s if FORWARDED.contains(&s) => {
                // SAFETY: a signal to the server's group (the server is not reaped
                // yet, so its group id cannot have been reused).
                unsafe { libc::kill(-server, s) };
            }
            // EINTR and anything else: wait again.
            _ => {}
        }
    }
}

/// The keeper holds no descriptor: the server's pipes (and std's exec-error pipe,
/// which tells roster that the server was exec'ed) belong to the server alone.
fn close_every_fd() {
    // SAFETY: close_range(0, ~0, 0) closes this process's descriptors; the
    // fallback closes them one by one.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint) != 0 {
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
    }
}

/// Whether the server has exited (without reaping it: its pid, and so its group
/// id, stays reserved while the keeper kills the rest).
fn has_exited(server: pid_t) -> bool {
    // SAFETY: waitid with WNOWAIT only looks; the siginfo is on the stack.
    unsafe {
        let mut info = MaybeUninit::<libc::siginfo_t>::zeroed().assume_init();
        let r =
            libc::waitid(libc::P_PID, server as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        r == 0 && info.si_pid() == server
    }
}

/// Reaps the orphans that have died (not the server).
fn reap_orphans(keeper: pid_t, server: pid_t) {
    for_each_child(keeper, |pid| {
        if pid != server {
            // SAFETY: reaps `pid` if it is a zombie; never waits.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    });
}

/// Kills every process of the server, round after round, until the keeper has no
/// child but the server; then reaps the server and returns its status.
fn kill_tree(keeper: pid_t, server: pid_t) -> c_int {
    for _ in 0..KILL_ROUNDS {
        // SAFETY: the server is our unreaped child: its group id is reserved.
        unsafe { libc::kill(-server, libc::SIGKILL) };
        let mut others = 0;
        for_each_child(keeper, |pid| {
            if pid != server {
                others += 1;
                // SAFETY: `pid` is our child, alive or unreaped, so both its pid and
                // (if it leads one) its group id are reserved. Kill its group, then
                // it, then reap it if it is gone already.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
                }
            }
        });
        if others == 0 && has_exited(server) {
            break;
        }
        wait_for_child(10);
    }
    let mut status: c_int = 0;
    // SAFETY: reaps the server, which has exited or been killed.
    let r = unsafe { libc::waitpid(server, &mut status, 0) };
    if r == server { status } else { libc::SIGKILL }
}

/// Waits up to `ms` for a SIGCHLD.
fn wait_for_child(ms: i64) {
    // SAFETY: a set with SIGCHLD only, and a timeout, on the stack. Other blocked
    // signals stay pending.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        let timeout = libc::timespec { tv_sec: 0, tv_nsec: ms * 1_000_000 };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
    }
}

/// Ends the keeper as the server ended: with its exit code, or by its signal.
fn exit_like(status: c_int) -> ! {
    // SAFETY: decoding a status, then leaving; `kill` of ourselves with the
    // server's signal, its default action restored, no core file.
    unsafe {
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let sig = if libc::WIFSIGNALED(status) { libc::WTERMSIG(status) } else { libc::SIGKILL };
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut set = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
}

/// Calls `f` with the pid of every child of `keeper` (alive or zombie): from
/// `/proc/<keeper>/task/<keeper>/children` (one read: the keeper has one
/// thread, so its main thread's children are all of its children) where the
/// kernel has that file, else by reading `/proc/<pid>/stat` of every process.
/// No allocation, stack buffers only.
pub(crate) fn for_each_child(keeper: pid_t, mut f: impl FnMut(pid_t)) {
    if !children_file(keeper, &mut f) {
        scan_proc(keeper, &mut f);
    }
}

/// The children of `keeper` from its `children` file; `false` when the file
/// cannot be read whole (no `CONFIG_PROC_CHILDREN`, or too many children).
fn children_file(keeper: pid_t, f: &mut impl FnMut(pid_t)) -> bool {
    // "/proc/" + pid + "/task/" + pid + "/children" + NUL fits in 64 bytes.
    let mut path = [0u8; 64];
    let mut digits = [0u8; 10];
    let pid = decimal(keeper, &mut digits);
    let parts: [&[u8]; 5] = [b"/proc/", pid, b"/task/", pid, b"/children"];
    let mut len = 0;
    for part in parts {
        let Some(slot) = path.get_mut(len..len + part.len()) else { return false };
        slot.copy_from_slice(part);
        len += part.len();
    }
    let mut list = [0u8; 4096];
    // SAFETY: the path is NUL-terminated (zeroed beyond `len`); reads are bounded
    // by the buffer; the descriptor is this function's.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let mut total = 0usize;
        while let Some(rest) = list.get_mut(total..) {
            if rest.is_empty() {
                break;
            }
            let n = libc::read(fd, rest.as_mut_ptr().cast(), rest.len());
            if n <= 0 {
                break;
            }
            total += n as usize;
        }
        libc::close(fd);
        total
    };
    if n == list.len() {
        // Maybe cut short: the full scan sees every child.
        return false;
    }
    for name in list[..n].split(|b| *b == b' ' || *b == b'\n') {
        if let Some(child) = parse_pid(name) {
            f(child);
        }
    }
    true
}

/// `n` in decimal, in `buf`.
fn decimal(n: pid_t, buf: &mut [u8; 10]) -> &[u8] {
    let mut n = n.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    &buf[at..]
}

/// The children of `keeper`, found by reading every process's `stat`.
fn scan_proc(keeper: pid_t, f: &mut impl FnMut(pid_t)) {
    // SAFETY: open/getdents64/read/close on descriptors this function owns, into
    // buffers on the stack, bounded by their lengths.
    unsafe {
        let proc_dir = libc::open(c"/proc".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if proc_dir < 0 {
            return;
        }
        // linux_dirent64 records need 8-byte alignment.
        let mut buf = [0u64; 1024];
        let bytes = std::mem::size_of_val(&buf);
        loop {
            let n = libc::syscall(libc::SYS_getdents64, proc_dir, buf.as_mut_ptr(), bytes);
            if n <= 0 {
                break;
            }
            let data = std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize);
            let mut at = 0;
            while at + 19 < data.len() {
                let reclen = u16::from_ne_bytes([data[at + 16], data[at + 17]]) as usize;
                if reclen == 0 || at + reclen > data.len() {
                    break;
                }
                let name = &data[at + 19..at + reclen];
                let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                if let Some(pid) = parse_pid(name)
                    && parent_of(name) == Some(keeper)
                {
                    f(pid);
                }
                at += reclen;
            }
        }
        libc::close(proc_dir);
    }
}

/// A directory name of /proc that is a process id.
fn parse_pid(name: &[u8]) -> Option<pid_t> {
    if name.is_empty() || name.len() > 10 {
        return None;
    }
    let mut pid: pid_t = 0;
    for &b in name {
        if !b.is_ascii_digit() {
            return None;
        }
        pid = pid.checked_mul(10)?.checked_add(pid_t::from(b - b'0'))?;
    }
    (pid > 0).then_some(pid)
}

/// The parent of the process whose /proc directory is `name`, from its `stat`.
fn parent_of(name: &[u8]) -> Option<pid_t> {
    // "/proc/" + up to 10 digits + "/stat" + NUL fits in 32 bytes.
    let mut path = [0u8; 32];
    let parts: [&[u8]; 3] = [b"/proc/", name, b"/stat"];
    let mut len = 0;
    for part in parts {
        path.get_mut(len..len + part.len())?.copy_from_slice(part);
        len += part.len();
    }
    // The first fields: "pid (comm) state ppid"; comm is at most 16 bytes.
    let mut stat = [0u8; 128];
    // SAFETY: the path is NUL-terminated (the buffer is zeroed beyond `len`); the
    // read is bounded by the buffer.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, stat.as_mut_ptr().cast(), stat.len());
        libc::close(fd);
        n
    };
    let stat = stat.get(..usize::try_from(n).ok()?)?;
    parse_ppid(stat)
}

/// The fourth field of a `/proc/<pid>/stat` line: after the last `)`, the state,
/// then the parent's pid.
fn parse_ppid(stat: &[u8]) -> Option<pid_t> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let mut fields = stat.get(close + 1..)?.split(|b| *b == b' ').filter(|f| !f.is_empty());
    let _state = fields.next()?;
    parse_pid(fields.next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_give_the_parent() {
        assert_eq!(parse_ppid(b"4242 (mcp server) S 17 4242 4242 0 -1"), Some(17));
        assert_eq!(parse_ppid(b"7 (a) b) (c) Z 1 7 7"), Some(1), "the comm may hold parentheses");
        assert_eq!(parse_ppid(b"7 (x) S"), None);
        assert_eq!(parse_pid(b"123"), Some(123));
        assert_eq!(parse_pid(b"self"), None);
        assert_eq!(parse_pid(b"99999999999"), None);
        assert_eq!(parse_pid(b"0"), None);
    }

    #[test]
    fn the_children_of_this_process_are_found_by_the_scan() {
        // The test harness runs tests on threads of their own: only the scan of
        // every process sees a child of a thread other than the main one.
        let me = pid_t::try_from(std::process::id()).unwrap();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let mut found = Vec::new();
        scan_proc(me, &mut |pid| found.push(pid));
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&pid_t::try_from(child.id()).unwrap()), "{found:?}");
    }

    #[test]
    fn the_children_of_a_single_threaded_process_are_read_in_one_file() {
        // A shell (one thread, like a keeper) with two children of its own.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5 & echo started; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(shell.stdout.take().unwrap()), &mut line).unwrap();
        let sh = pid_t::try_from(shell.id()).unwrap();
        let (mut fast, mut scanned) = (Vec::new(), Vec::new());
        let had_file = children_file(sh, &mut |pid| fast.push(pid));
        scan_proc(sh, &mut |pid| scanned.push(pid));
        for pid in &scanned {
            // SAFETY: the shell's own children, not yet reaped (the shell waits).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = shell.wait();
        fast.sort_unstable();
        scanned.sort_unstable();
        assert_eq!(scanned.len(), 2, "{scanned:?}");
        if had_file {
            assert_eq!(fast, scanned, "the file and the scan agree");
        }
    }

    #[test]
    fn pids_are_written_in_decimal() {
        let mut buf = [0u8; 10];
        assert_eq!(decimal(7, &mut buf), b"7");
        assert_eq!(decimal(4_194_304, &mut buf), b"4194304");
        assert_eq!(decimal(pid_t::MAX, &mut buf), b"2147483647");
    }
}
