//! The operator's commands on the proxy's own port, as the seed's runbook asks for them:
//! take a server out, keep a returning one out until told, warm one now, put one back.
//!
//! ```text
//! backend drain <server>   out of reads and writes (its writes are recorded as missed)
//! backend hold <server>    out of reads until `up` or `warm` (it still takes writes)
//! backend warm <server>    flush it, fill it from a healthy replica, then serve it
//! backend up <server>      repair what it missed and serve it, without a warm-up
//! ```
//!
//! `<server>` is a server's address as configured (`host:port`), or `<pool>/<host:port>` as
//! `stats backends` names it. The answer is `OK`, or `CLIENT_ERROR` saying what is wrong; the
//! change itself is logged and shown by `stats backends`. `keepcached ctl` sends these.

use keepcached_protocol::reply;

use crate::health::{Order, State};
use crate::Context;

const VERB: &[u8] = b"backend ";
const USAGE: &[u8] = b"CLIENT_ERROR usage: backend drain|hold|warm|up <host:port>";

/// Whether a line memcached would not know is one of these commands.
pub fn is_admin(frame: &[u8]) -> bool {
    frame.starts_with(VERB)
}

/// Runs one command line (with its line end) and appends the answer.
pub fn execute(ctx: &Context, frame: &[u8], out: &mut Vec<u8>) {
    let line = frame.trim_ascii_end();
    let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
    let (Some(_), Some(action), Some(name), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return reply::line(out, USAGE);
    };
    if ![&b"drain"[..], b"hold", b"warm", b"up"].contains(&action) {
        return reply::line(out, USAGE);
    }
    let router = ctx.router();
    let Some(backend) = router.live().find(|b| {
        name == b.addr.as_bytes()
            || router.pools.iter().any(|p| {
                name.strip_prefix(p.name.as_bytes())
                    .and_then(|rest| rest.strip_prefix(b"/"))
                    == Some(b.addr.as_bytes())
            })
    }) else {
        let error = format!("CLIENT_ERROR no backend {}", String::from_utf8_lossy(name));
        return reply::line(out, error.as_bytes());
    };
    let health = &backend.health;
    let order = match action {
        b"drain" => {
            // Out of service as this command returns: no read or write reaches it after OK,
            // and an earlier `up` or `warm` not yet carried out does not undo it.
            *health.order.lock() = None;
            health.set_state(State::Drained, "the operator drained it");
            health.wake.notify_one();
            return out.extend_from_slice(reply::OK);
        }
        b"hold" => {
            health.standing.lock().held = true;
            health.change(
                &[State::Up, State::Warming],
                State::Suspect,
                "the operator holds it out of reads",
            );
            tracing::info!(backend = %backend.addr, "held out of reads by the operator");
            health.wake.notify_one();
            return out.extend_from_slice(reply::OK);
        }
        b"warm" => Order::Warm,
        b"up" => Order::Up,
        _ => return reply::line(out, USAGE),
    };
    tracing::info!(backend = %backend.addr, ?order, "operator order");
    *health.order.lock() = Some(order);
    health.wake.notify_one();
    out.extend_from_slice(reply::OK);
}
