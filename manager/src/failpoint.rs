//! Failpoints: named places where the manager can be made to crash, so that tests can stop
//! it at the worst moment (between the steps of an election) and check that the next manager
//! recovers. `SHARDLINE_FAILPOINTS` holds a comma-separated list of names; reaching a listed
//! point logs `failpoint <name> reached; exiting` and exits with code [`EXIT_CODE`] at once,
//! with no cleanup: as far as anyone else can tell, the manager crashed there.

use std::sync::OnceLock;

/// The environment variable listing the active failpoints.
pub const ENV: &str = "SHARDLINE_FAILPOINTS";
/// The exit code of a manager stopped at a failpoint.
pub const EXIT_CODE: i32 = 86;

/// After the election chose its winner and term, before the marker is appended.
pub const ELECTION_BEFORE_MARKER: &str = "election.before_marker";
/// The marker is appended, the metadata not yet updated.
pub const ELECTION_AFTER_MARKER: &str = "election.after_marker";
/// The metadata names the new primary; the election has not logged or answered yet.
pub const ELECTION_AFTER_METADATA: &str = "election.after_metadata";

fn active() -> &'static [String] {
    static ACTIVE: OnceLock<Vec<String>> = OnceLock::new();
    ACTIVE.get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()))
}

/// The names in a `SHARDLINE_FAILPOINTS` value (blanks around names ignored).
pub fn parse(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Crashes the manager here if `name` is an active failpoint.
pub fn hit(name: &str) {
    if active().iter().any(|n| n == name) {
        tracing::error!("failpoint {name} reached; exiting");
        // The log line goes through a synchronous stderr writer; this one is belt and braces
        // for a subscriber that buffers.
        eprintln!("failpoint {name} reached; exiting");
        std::process::exit(EXIT_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_a_comma_separated_list() {
        assert_eq!(
            parse(" election.before_marker ,,election.after_marker"),
            ["election.before_marker", "election.after_marker"]
        );
        assert!(parse("").is_empty());
    }
}
