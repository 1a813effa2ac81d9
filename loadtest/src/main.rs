//! shardcast-loadtest: the bot that spawns thousands of real WebSocket clients against a
//! shardcast server. This crate is a placeholder in the workspace so the layout is fixed; the
//! scenarios (fanout, chat, dm, idle, churn) arrive with the load-test issue.

fn main() {
    eprintln!("shardcast-loadtest: no scenarios yet; see the load-test issue");
    std::process::exit(2);
}
