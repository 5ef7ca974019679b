//! The wording of the admin answers, as the assignment writes them: `Add Server:4 and
//! Server:5`. Kept apart so that the operations read as logic and the phrasing is tested.

use shardline::names::ServerName;

/// `Server4` → `4` as in the assignment's messages; other names stay whole.
pub fn short(n: &ServerName) -> &str {
    n.as_str()
        .strip_prefix("Server")
        .filter(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or(n.as_str())
}

/// `a`, `a and b`, `a, b and c`.
pub fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The `/add` answer's message: `Add Server:4 and Server:5`.
pub fn added<'a>(servers: impl IntoIterator<Item = &'a ServerName>) -> String {
    let names: Vec<String> = servers
        .into_iter()
        .map(|n| format!("Server:{}", short(n)))
        .collect();
    format!("Add {}", join_and(&names))
}

/// `Server1, Server2`: the servers named in an error message.
pub fn comma_list(servers: &[ServerName]) -> String {
    servers
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    #[test]
    fn messages_read_like_the_assignment() {
        assert_eq!(short(&name("Server4")), "4");
        assert_eq!(short(&name("Server")), "Server");
        assert_eq!(short(&name("db-1")), "db-1");
        let l = |v: &[&str]| join_and(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(l(&["a"]), "a");
        assert_eq!(l(&["a", "b"]), "a and b");
        assert_eq!(l(&["a", "b", "c"]), "a, b and c");
        assert_eq!(
            added(&[name("Server4"), name("Server5"), name("db-1")]),
            "Add Server:4, Server:5 and Server:db-1"
        );
        assert_eq!(
            comma_list(&[name("Server1"), name("Server2")]),
            "Server1, Server2"
        );
    }
}
