//! Crash injection for tests: with `IMALOG_FAULT=<point>` (or
//! `<point>:<n>` for the n-th time the point is reached), the collector
//! kills itself with SIGKILL at that step of the export protocol, exactly as
//! `kill -9` would. Without the variable nothing happens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A step of the export protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// `A` succeeded, nothing read yet.
    AfterStage,
    /// The list was read whole; nothing is stored yet.
    DuringRead,
    /// The chunk is stored as pending, not yet deleted in the kernel.
    AfterStore,
    /// The kernel deleted the chunk (`D` or `N`); it is not committed yet.
    AfterDelete,
    /// Half of a segment frame written.
    SegmentWrite,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::AfterStage => "after-stage",
            Point::DuringRead => "during-read",
            Point::AfterStore => "after-store",
            Point::AfterDelete => "after-delete",
            Point::SegmentWrite => "segment-write",
        }
    }
}

struct Plan {
    point: String,
    at: u64,
    seen: AtomicU64,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let value = std::env::var("IMALOG_FAULT").ok()?;
        let (point, at) = match value.split_once(':') {
            Some((point, at)) => (point.to_string(), at.parse().unwrap_or(1)),
            None => (value, 1),
        };
        Some(Plan { point, at: at.max(1), seen: AtomicU64::new(0) })
    })
    .as_ref()
}

/// Kills the process when the configured fault point is reached, after
/// running `before` (which can leave a partial effect behind, as a crash in
/// the middle of a step would).
pub fn check(point: Point, before: impl FnOnce()) {
    let Some(plan) = plan() else { return };
    if plan.point != point.name() {
        return;
    }
    if plan.seen.fetch_add(1, Ordering::SeqCst) + 1 == plan.at {
        tracing::warn!(point = point.name(), "fault injection: killing the collector");
        before();
        // SAFETY: kill and getpid take plain integers; SIGKILL ends the
        // process at once, like `kill -9` from outside.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
