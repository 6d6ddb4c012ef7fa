//! Process hardening at start: no core dumps, not dumpable.
//!
//! sidekey holds every provider key of the pod in memory. A core dump (a
//! crash, `SIGQUIT`, a node's core pattern that collects dumps) would write
//! them to disk, and a process of the same user could read them from
//! `/proc/<pid>/mem` or attach a debugger. So the binary, first thing:
//!
//! - sets `RLIMIT_CORE` to 0, soft and hard (no dump file, and it cannot be
//!   raised again);
//! - on Linux, clears the dumpable flag (`PR_SET_DUMPABLE` 0): no core
//!   dump whatever the limit, no `ptrace` attach by the same user, and
//!   `/proc/<pid>` files such as `mem`, `environ` and `fd` owned by root.
//!
//! Through `rustix`, a safe wrapper over the system calls (the crate
//! forbids `unsafe`). A refusal (a seccomp profile, an exotic kernel) is
//! reported back, never fatal: `main` logs it at debug.

/// Turns core dumps off for this process. Returns what could not be done
/// (empty when everything was), for the log.
#[must_use]
pub fn no_core_dumps() -> Vec<String> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let mut refused = Vec::new();
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, zero) {
        refused.push(format!("setrlimit(RLIMIT_CORE, 0): {e}"));
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        refused.push(format!("prctl(PR_SET_DUMPABLE, 0): {e}"));
    }
    refused
}
