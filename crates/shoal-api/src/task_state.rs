//! The order of task states: states only move forward, and a report that would move a task
//! backwards is dropped. Prost derives `Ord` in declaration order, which is also numeric order.

use crate::v1::TaskState;

impl TaskState {
    /// True for states a task never leaves (complete, shutdown, failed, rejected, and the
    /// bookkeeping states after them).
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// True when moving from `self` to `next` goes forward (or stays put).
    pub fn may_advance_to(self, next: TaskState) -> bool {
        next >= self
    }

    /// The lowercase name Docker users know (`running`, `rejected`, …).
    pub fn display_name(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORWARD: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    #[test]
    fn states_are_ordered_as_declared() {
        for pair in FORWARD.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
            assert!(pair[0].may_advance_to(pair[1]));
            assert!(!pair[1].may_advance_to(pair[0]));
        }
    }

    #[test]
    fn terminal_states() {
        assert!(!TaskState::Running.is_terminal());
        assert!(TaskState::Complete.is_terminal());
        assert!(TaskState::Rejected.is_terminal());
        assert_eq!(TaskState::Running.display_name(), "running");
    }
}
