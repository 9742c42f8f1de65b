//! The command line's error plumbing: usage errors (exit 2) and error messages that name
//! each cause once.

use std::fmt;

/// A bad argument found after clap parsed the command line (a time that does not parse, a
/// limit beyond what the machine can do, `prune` that would empty the database): exit 2, like
/// clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Wraps `e` as a usage error (exit 2).
pub fn usage(e: impl fmt::Display) -> anyhow::Error {
    Usage(e.to_string()).into()
}

/// A failure that maps to an exit code other than 3.
#[derive(Debug)]
pub struct Exit(pub u8);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// The message of `e` and its causes, each said once: a cause whose text the message already
/// holds is left out, and a cause that repeats the whole message so far (and says more)
/// replaces it.
pub fn describe(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if msg.is_empty() {
            msg = c;
        } else if msg.contains(&c) {
            continue;
        } else if c.contains(&msg) {
            msg = c;
        } else if let Some(last) = msg.rsplit(": ").next().filter(|l| c.contains(*l)) {
            // "context: A" followed by a cause "A, more": keep the context, say A once.
            let keep = msg.len() - last.len();
            msg.truncate(keep);
            msg.push_str(&c);
        } else {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file x: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Outer(io));
        assert_eq!(describe(&e), "cannot read config file x: No such file");
        let e = anyhow::anyhow!("disk on fire").context("writing out.json");
        assert_eq!(describe(&e), "writing out.json: disk on fire");
    }
}
