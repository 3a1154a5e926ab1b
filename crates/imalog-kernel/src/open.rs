//! Open and release mediation of the list files (`ima_measure_lock` and
//! `ima_measure_unlock` in the merged `ima_fs.c`).
//!
//! Readers and a writer never have list files open at the same time, which
//! is what lets the staging commands move list pointers that lock-free
//! readers would otherwise walk. One writer task may open several files for
//! writing (for example a `_staged` file and an original file), counted in
//! `extra_writes`. The rules are reproduced literally, including the edge
//! case where a write descriptor released by another task (inherited across
//! `fork`) resets the state to idle while other write descriptors remain.

use std::sync::Mutex;

use crate::errno::Errno;

/// A kernel task (thread) id.
pub type TaskId = u64;

/// Who opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The opening thread.
    pub task: TaskId,
    /// Whether its effective capabilities include CAP_SYS_ADMIN.
    pub cap_sys_admin: bool,
}

/// `users`, `writer_task` and `extra_writes`, under their own mutex (not
/// the list mutex).
#[derive(Debug, Default)]
struct State {
    /// More than 0: that many readers; -1: a writer; 0: idle.
    users: i64,
    writer_task: Option<TaskId>,
    extra_writes: u64,
}

/// The open-file state of all list files.
#[derive(Debug, Default)]
pub struct OpenMediator {
    state: Mutex<State>,
}

/// A snapshot of the mediation state, for tests and invariant checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSnapshot {
    /// Readers (more than 0), a writer (-1), or idle (0).
    pub users: i64,
    /// The task holding the write side.
    pub writer_task: Option<TaskId>,
    /// Further write opens by that task.
    pub extra_writes: u64,
}

impl OpenMediator {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters half
        // updated: every update is a single assignment sequence below.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits an open. `write` is true for `O_WRONLY` and `O_RDWR`.
    pub fn open(&self, write: bool, caller: Caller) -> Result<(), Errno> {
        if write && !caller.cap_sys_admin {
            return Err(Errno::Eperm);
        }
        let mut state = self.lock();
        if !write && state.users == i64::MAX {
            return Err(Errno::Enfile);
        }
        if write && state.writer_task == Some(caller.task) {
            state.extra_writes += 1;
            return Ok(());
        }
        if (write && state.users != 0) || (!write && state.users < 0) {
            return Err(Errno::Ebusy);
        }
        if write {
            state.users = -1;
            state.writer_task = Some(caller.task);
        } else {
            state.users += 1;
        }
        Ok(())
    }

    /// Releases an open; `task` is the task that closes the last reference
    /// to the file object.
    pub fn release(&self, write: bool, task: TaskId) {
        let mut state = self.lock();
        if write {
            if state.writer_task == Some(task) && state.extra_writes > 0 {
                state.extra_writes -= 1;
            } else {
                state.users += 1;
                state.writer_task = None;
            }
        } else {
            state.users -= 1;
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> OpenSnapshot {
        let state = self.lock();
        OpenSnapshot { users: state.users, writer_task: state.writer_task, extra_writes: state.extra_writes }
    }

    /// Sets the reader count, so that tests can reach the `LONG_MAX` limit
    /// without that many opens.
    #[doc(hidden)]
    pub fn set_readers_for_test(&self, users: i64) {
        self.lock().users = users;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Caller = Caller { task: 1, cap_sys_admin: true };
    const OTHER: Caller = Caller { task: 2, cap_sys_admin: true };

    #[test]
    fn writer_without_cap_sys_admin_is_eperm() {
        let mediator = OpenMediator::default();
        assert_eq!(mediator.open(true, Caller { task: 1, cap_sys_admin: false }), Err(Errno::Eperm));
        assert_eq!(mediator.open(false, Caller { task: 1, cap_sys_admin: false }), Ok(()));
    }

    #[test]
    fn readers_and_writer_exclude_each_other() {
        let mediator = OpenMediator::default();
        mediator.open(false, ROOT).unwrap();
        assert_eq!(mediator.open(true, OTHER), Err(Errno::Ebusy));
        mediator.release(false, ROOT.task);
        mediator.open(true, ROOT).unwrap();
        assert_eq!(mediator.open(false, OTHER), Err(Errno::Ebusy));
        assert_eq!(mediator.open(false, ROOT), Err(Errno::Ebusy), "the writer itself must use O_RDWR");
        assert_eq!(mediator.open(true, OTHER), Err(Errno::Ebusy));
    }

    #[test]
    fn same_task_opens_extra_writers() {
        let mediator = OpenMediator::default();
        mediator.open(true, ROOT).unwrap();
        mediator.open(true, ROOT).unwrap();
        assert_eq!(mediator.snapshot(), OpenSnapshot { users: -1, writer_task: Some(1), extra_writes: 1 });
        mediator.release(true, ROOT.task);
        assert_eq!(mediator.snapshot().extra_writes, 0);
        mediator.release(true, ROOT.task);
        assert_eq!(mediator.snapshot(), OpenSnapshot { users: 0, writer_task: None, extra_writes: 0 });
    }

    #[test]
    fn release_by_other_task_resets_to_idle() {
        let mediator = OpenMediator::default();
        mediator.open(true, ROOT).unwrap();
        mediator.open(true, ROOT).unwrap();
        mediator.release(true, OTHER.task);
        assert_eq!(mediator.snapshot(), OpenSnapshot { users: 0, writer_task: None, extra_writes: 1 });
    }

    #[test]
    fn reader_count_overflow_is_enfile() {
        let mediator = OpenMediator::default();
        mediator.set_readers_for_test(i64::MAX);
        assert_eq!(mediator.open(false, ROOT), Err(Errno::Enfile));
        mediator.set_readers_for_test(i64::MAX - 1);
        assert_eq!(mediator.open(false, ROOT), Ok(()));
    }
}
